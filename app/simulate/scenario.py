"""A seedable marketplace: creators, their plans, and what each consumer does day by day.

Everything here is decided up front from the seed, so the oracle can compute what should happen
from this alone. Times are Unix seconds on the simulation's clock, which starts at a UTC midnight:
consumers subscribe at a midnight (so billing periods and usage days line up), and act at noon
(so a plan change never falls on a period boundary).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

DAY = 86400
NOON = 12 * 3600
ACT_EVERY = 5  # days
START = datetime(2027, 1, 1, tzinfo=UTC)

PlanKind = Literal["free", "basic", "pro", "metered", "overage"]
ActionKind = Literal[
    "upgrade", "downgrade", "cancel_at_period_end", "cancel_now", "card_fails", "card_recovers",
    "refund", "dispute",
]  # fmt: skip


@dataclass(frozen=True)
class PlanSpec:
    """One plan of a creator's API: `monthly` in minor units, `per_call` in minor units per call
    (on an overage plan: per call past the `included` calls of a period)."""

    kind: PlanKind
    currency: str
    monthly: int = 0
    per_call: Decimal = Decimal(0)
    included: int | None = None


@dataclass(frozen=True)
class PriceChange:
    """The creator moves `kind` to a new monthly price (a new plan version) at `at`."""

    at: int
    kind: PlanKind
    monthly: int


@dataclass(frozen=True)
class CreatorSpec:
    key: str
    currency: str
    plans: dict[PlanKind, PlanSpec]
    price_changes: tuple[PriceChange, ...] = ()

    def monthly_price(self, kind: PlanKind, at: int) -> int:
        """The price a subscription to `kind` made (or changed to) at `at` is on."""
        price = self.plans[kind].monthly
        for change in self.price_changes:
            if change.kind == kind and change.at <= at:
                price = change.monthly
        return price


@dataclass(frozen=True)
class Action:
    at: int
    kind: ActionKind


@dataclass
class ConsumerSpec:
    key: str
    creator: str
    plan: PlanKind
    joins_at: int
    actions: list[Action] = field(default_factory=list)
    # (successful, failed) calls per UTC day from the join day, while the subscription is live.
    calls_per_day: tuple[int, int] = (0, 0)
    stops_at: int | None = None  # no traffic from this day on (the subscription has ended)

    def calls_on(self, day: date) -> tuple[int, int]:
        """The traffic of one UTC day: a steady base with a deterministic daily wobble."""
        moment = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        if moment < self.joins_at or (self.stops_at is not None and moment >= self.stops_at):
            return 0, 0
        successful, failed = self.calls_per_day
        wobble = (day.toordinal() * 7919 + int(self.key.rsplit("-", 1)[1]) * 104729) % 5
        return successful + wobble * 3, failed


@dataclass
class Scenario:
    seed: int
    months: int
    start: int
    end: int
    commission: Decimal
    creators: dict[str, CreatorSpec]
    consumers: list[ConsumerSpec]

    def days(self) -> list[date]:
        first = datetime.fromtimestamp(self.start, UTC).date()
        return [first + timedelta(days=n) for n in range((self.end - self.start) // DAY)]


# Prices per currency (minor units): USD and EUR in cents, JPY in yen (no minor unit).
_PRICES: dict[str, dict[PlanKind, tuple[int, str]]] = {
    "usd": {"free": (0, "0"), "basic": (1000, "0"), "pro": (3000, "0"), "metered": (0, "0.2")},
    "eur": {"free": (0, "0"), "basic": (900, "0"), "pro": (2700, "0"), "metered": (0, "0.18")},
    "jpy": {"free": (0, "0"), "basic": (1200, "0"), "pro": (3600, "0"), "metered": (0, "0.25")},
}


# Overage plans: (monthly price, included calls, minor units per call past them). Consumers make
# about 600 to 12,000 calls a month, so some periods stay within the included calls, most do not.
_OVERAGE: dict[str, tuple[int, int, str]] = {
    "usd": (1500, 3000, "0.5"),
    "eur": (1400, 3000, "0.45"),
    "jpy": (1800, 3000, "0.3"),
}


def add_months(moment: int, months: int) -> int:
    """Stripe's monthly step: same day of month, clamped to the month's last day."""
    when = datetime.fromtimestamp(moment, UTC)
    year, month = divmod(when.month - 1 + months, 12)
    year += when.year
    last = (datetime(year + (month + 1) // 12, (month + 1) % 12 + 1, 1, tzinfo=UTC) - timedelta(days=1)).day
    return int(when.replace(year=year, month=month + 1, day=min(when.day, last)).timestamp())


def build_scenario(
    *, consumers: int, months: int, seed: int, commission: Decimal = Decimal("0.20")
) -> Scenario:
    """The marketplace of `seed`: three creators (USD, EUR, JPY) and `consumers` consumers."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible scenario, not a secret
    start = int(START.timestamp())
    end = add_months(start, months)
    creators: dict[str, CreatorSpec] = {}
    for currency, prices in _PRICES.items():
        plans = {
            kind: PlanSpec(kind, currency, monthly, Decimal(per_call))
            for kind, (monthly, per_call) in prices.items()
        }
        monthly, included, per_call = _OVERAGE[currency]
        plans["overage"] = PlanSpec("overage", currency, monthly, Decimal(per_call), included)
        # Each creator raises the pro price a third of the way in: later changes get the new version.
        grid = action_moments(start, end)
        raise_at = grid[len(grid) // 3]
        change = PriceChange(raise_at, "pro", prices["pro"][0] * 6 // 5)
        creators[f"creator-{currency}"] = CreatorSpec(f"creator-{currency}", currency, plans, (change,))
    keys = list(creators)
    people: list[ConsumerSpec] = []
    for n in range(consumers):
        creator = keys[n % len(keys)]
        kinds: list[PlanKind] = ["free", "basic", "pro", "metered", "overage"]
        plan = rng.choices(kinds, weights=[15, 30, 15, 25, 15])[0]
        joins_at = start + rng.randrange(0, 3) * 5 * DAY
        consumer = ConsumerSpec(f"consumer-{n}", creator, plan, joins_at)
        consumer.calls_per_day = (rng.randrange(20, 400), rng.randrange(0, 6))
        _plan_actions(rng, consumer, start, end)
        people.append(consumer)
    return Scenario(seed, months, start, end, commission, creators, people)


def action_moments(start: int, end: int) -> list[int]:
    """Consumers and creators act at noon every fifth day (fewer distinct moments to step through)."""
    return list(range(start + NOON, end, ACT_EVERY * DAY))


def _plan_actions(rng: random.Random, consumer: ConsumerSpec, start: int, end: int) -> None:
    """At most one story per consumer, so every outcome stays easy to state."""
    grid = action_moments(start, end)
    joined = consumer.joins_at
    periods = []
    moment = joined
    while moment < end:
        periods.append((moment, add_months(moment, 1)))
        moment = add_months(moment, 1)

    def noon_in(period: tuple[int, int]) -> int:
        return rng.choice([m for m in grid if period[0] + DAY < m < period[1] - DAY])

    if consumer.plan == "free" or len(periods) < 2:
        return
    story = rng.random()
    some = periods[rng.randrange(0, len(periods) - 1)]
    if consumer.plan in ("basic", "pro") and story < 0.25:
        kind: ActionKind = "upgrade" if consumer.plan == "basic" else "downgrade"
        consumer.actions.append(Action(noon_in(some), kind))
    elif story < 0.35:
        consumer.actions.append(Action(noon_in(some), "cancel_at_period_end"))
        consumer.stops_at = some[1]
    elif story < 0.45:
        at = noon_in(some)
        consumer.actions.append(Action(at, "cancel_now"))
        consumer.stops_at = at - NOON
    elif story < 0.55 and len(periods) >= 3:
        # The card fails before a renewal and the consumer fixes it four days after it.
        failing = periods[rng.randrange(0, len(periods) - 2)]
        consumer.actions.append(Action(noon_in(failing), "card_fails"))
        consumer.actions.append(Action(failing[1] + 4 * DAY + NOON, "card_recovers"))
    elif consumer.plan in ("basic", "pro") and story < 0.65:
        kind = "refund" if story < 0.6 else "dispute"
        consumer.actions.append(Action(noon_in(some), kind))
