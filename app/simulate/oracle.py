"""What the scenario should bill and earn, computed from the scenario alone (never our tables).

Stripe's rules, as documented, applied to each consumer's story:
- a subscription's first invoice at once (a metered price bills nothing up front), then one per
  monthly period at its end: the licensed price for the new period, or the metered usage of the
  period that ended (successful calls x price per call, rounded half up to the minor unit); an
  overage plan bills both on one invoice: its licensed price, and the period's calls through its
  graduated tiers (the included calls at 0, each further call at the overage price, rounded half
  up), the same on its final invoice;
- a plan change mid-period invoices at once the debit for the rest of the period on the new price
  less the credit for it on the old one (each rounded half up); a negative total is customer
  credit that later invoices take first;
- cancelling at the period end ends it then, with a last invoice of the metered usage; cancelling
  at once ends it now, invoicing the metered usage so far, or crediting the unused time of a
  monthly price (customer credit, not a refund);
- a failing card that is fixed before the last retry leaves the invoice paid in full;
- each paid invoice earns its creator `collected - round_half_up(collected x commission)`, where
  collected is what the card paid plus the credit the invoice used; a full refund or a lost
  dispute takes that back (and the platform gives back its commission), and so does a credit
  invoice take back its credit, which returns to the consumer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from app.simulate.scenario import DAY, ConsumerSpec, CreatorSpec, PlanKind, Scenario, add_months


def half_up(value: Decimal) -> int:
    return int(value.to_integral_value(ROUND_HALF_UP))


@dataclass(frozen=True)
class ExpectedInvoice:
    consumer: str
    created: int
    reason: str  # subscription_create, subscription_cycle, subscription_update, final
    total: int
    amount_paid: int
    currency: str
    usage: int | None = None  # successful calls billed, for a metered invoice

    @property
    def label(self) -> str:
        return f"{self.consumer} {datetime.fromtimestamp(self.created, UTC):%Y-%m-%d %H:%M} {self.reason}"


@dataclass
class CreatorBook:
    currency: str
    collected: int = 0
    earned: int = 0  # net of commission, less reversals
    platform: int = 0  # commission kept, less what reversals gave back


@dataclass
class Expected:
    invoices: dict[str, list[ExpectedInvoice]] = field(default_factory=dict)
    live: dict[str, bool] = field(default_factory=dict)  # subscription live at the horizon
    paid_plan: dict[str, bool] = field(default_factory=dict)  # has a Stripe subscription at all
    creators: dict[str, CreatorBook] = field(default_factory=dict)
    earned_by: dict[str, int] = field(default_factory=dict)  # creator's net per consumer

    def collected_by(self, consumer: str) -> int:
        return sum(i.amount_paid for i in self.invoices.get(consumer, []))


def usage_between(consumer: ConsumerSpec, start: int, end: int) -> int:
    """Successful calls of the UTC days that start in [start, end)."""
    total = 0
    day = datetime.fromtimestamp(start, UTC).date()
    while int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) < end:
        total += consumer.calls_on(day)[0]
        day += timedelta(days=1)
    return total


def expect(scenario: Scenario, horizon: int) -> Expected:
    expected = Expected()
    for key, creator in scenario.creators.items():
        expected.creators[key] = CreatorBook(creator.currency)
    for consumer in scenario.consumers:
        creator = scenario.creators[consumer.creator]
        invoices, live = _consumer_invoices(consumer, creator, horizon)
        expected.invoices[consumer.key] = invoices
        expected.live[consumer.key] = live
        expected.paid_plan[consumer.key] = consumer.plan != "free"
        book = expected.creators[consumer.creator]
        before = book.earned
        _book(book, consumer, invoices, scenario.commission)
        expected.earned_by[consumer.key] = book.earned - before
    return expected


def _consumer_invoices(
    consumer: ConsumerSpec, creator: CreatorSpec, horizon: int
) -> tuple[list[ExpectedInvoice], bool]:
    if consumer.plan == "free":
        return [], True
    currency = creator.currency
    per_call = creator.plans["metered"].per_call
    overage = creator.plans["overage"]
    kind: PlanKind = consumer.plan
    price = creator.monthly_price(kind, consumer.joins_at) if kind != "metered" else 0
    credit = 0
    invoices: list[ExpectedInvoice] = []

    def bill(created: int, reason: str, total: int, usage: int | None = None) -> None:
        nonlocal credit
        applied = min(credit, max(total, 0))
        credit = credit - applied + max(-total, 0)
        due = max(total, 0) - applied
        invoices.append(ExpectedInvoice(consumer.key, created, reason, total, due, currency, usage))

    def usage_invoice(created: int, reason: str, start: int, end: int, licensed: int = 0) -> None:
        """The usage of [start, end), with `licensed` (the overage plan's price or credit) beside."""
        calls = usage_between(consumer, start, end)
        if kind == "overage":
            past = max(calls - (overage.included or 0), 0)
            bill(created, reason, licensed + half_up(overage.per_call * past), calls)
        else:
            bill(created, reason, licensed + half_up(per_call * calls), calls)

    bill(consumer.joins_at, "subscription_create", price, 0 if kind == "metered" else None)
    start, end = consumer.joins_at, add_months(consumer.joins_at, 1)
    actions = sorted(consumer.actions, key=lambda a: a.at)
    cancel_at_end = False
    while True:
        for action in actions:
            if not start <= action.at < end:
                continue
            if action.kind in ("upgrade", "downgrade"):
                new_kind: PlanKind = "pro" if action.kind == "upgrade" else "basic"
                new_price = creator.monthly_price(new_kind, action.at)
                remaining = Decimal(end - action.at) / Decimal(end - start)
                bill(
                    action.at,
                    "subscription_update",
                    half_up(new_price * remaining) - half_up(price * remaining),
                )
                kind, price = new_kind, new_price
            elif action.kind == "cancel_at_period_end":
                cancel_at_end = True
            elif action.kind == "cancel_now":
                today = action.at - action.at % DAY
                remaining = Decimal(end - action.at) / Decimal(end - start)
                if kind == "metered":
                    usage_invoice(action.at, "final", start, today)
                elif kind == "overage":  # the credit for unused time beside the usage so far
                    usage_invoice(action.at, "final", start, today, -half_up(price * remaining))
                else:  # the unused time comes back as customer credit, on a final invoice
                    bill(action.at, "final", -half_up(price * remaining))
                return invoices, False
        if end > horizon:
            return invoices, True
        if cancel_at_end:
            if kind in ("metered", "overage"):
                usage_invoice(end, "final", start, end)
            return invoices, False
        if kind == "metered":
            usage_invoice(end, "subscription_cycle", start, end)
        elif kind == "overage":
            usage_invoice(end, "subscription_cycle", start, end, price)
        else:
            bill(end, "subscription_cycle", price)
        start, end = end, add_months(end, 1)


def _book(book: CreatorBook, consumer: ConsumerSpec, invoices: list[ExpectedInvoice], rate: Decimal) -> None:
    reversed_at = [a.at for a in consumer.actions if a.kind in ("refund", "dispute")]
    taken_back: set[int] = set()
    for moment in reversed_at:
        paid = [n for n, i in enumerate(invoices) if i.created <= moment and i.amount_paid > 0]
        if paid:
            taken_back.add(paid[-1])
    for n, invoice in enumerate(invoices):
        book.collected += invoice.amount_paid
        if invoice.total < 0:
            # The credit goes back to the consumer (their balance): the creator gives it back.
            commission = half_up(Decimal(-invoice.total) * rate)
            book.earned -= -invoice.total - commission
            book.platform -= commission
        elif n not in taken_back:
            # Paid in full, by card and by credit from the balance.
            commission = half_up(Decimal(invoice.total) * rate)
            book.earned += invoice.total - commission
            book.platform += commission


def totals_by_currency(expected: Expected) -> dict[str, CreatorBook]:
    out: dict[str, CreatorBook] = defaultdict(lambda: CreatorBook(""))
    for book in expected.creators.values():
        total = out[book.currency]
        total.currency = book.currency
        total.collected += book.collected
        total.earned += book.earned
        total.platform += book.platform
    return dict(out)
