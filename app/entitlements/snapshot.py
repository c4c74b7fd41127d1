"""A subscription's entitlement as the gateway needs it: pure data and the rules derived from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

import orjson

from app.money import exponent

# Statuses in which calls are allowed (past_due keeps working until dunning suspends the key).
CALLABLE = frozenset({"active", "trial", "past_due"})
SNAPSHOT_VERSION = 1


def overage_amount(
    currency: str, overage_price_per_call: Decimal | None, call_limit: int | None, calls: int
) -> int:
    """The overage of `calls` in a period past the included `call_limit`, in minor units (half up)."""
    if overage_price_per_call is None or call_limit is None or calls <= call_limit:
        return 0
    amount = (overage_price_per_call * (calls - call_limit)).scaleb(exponent(currency))
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class Entitlement:
    subscription_id: str
    consumer_id: str
    api_id: str
    api_key_id: str | None
    status: str
    suspended: bool
    plan_id: str
    plan_version: int
    plan_type: str
    currency: str
    # Included calls per period; a hard limit unless `overage_price_per_call` is set.
    call_limit: int | None
    price_per_call: str | None
    overage_price_per_call: str | None
    monthly_amount: int | None
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    rate_limit_per_month: int | None
    # Unix seconds; the period may be None before Stripe reported one (then monthly from start).
    current_period_start: int | None
    current_period_end: int | None
    started_at: int
    monthly_spend_cap: int | None

    def dumps(self) -> bytes:
        return orjson.dumps({"v": SNAPSHOT_VERSION, **asdict(self)})

    @classmethod
    def loads(cls, raw: bytes | str) -> Entitlement | None:
        data: dict[str, Any] = orjson.loads(raw)
        if data.pop("v", None) != SNAPSHOT_VERSION:
            return None  # written by another version of the service: reload from the database
        return cls(**data)

    @property
    def overage(self) -> bool:
        return self.overage_price_per_call is not None and self.call_limit is not None

    @property
    def hard_limit(self) -> int | None:
        """Calls per period beyond which a check refuses (`quota_exhausted`)."""
        return None if self.overage else self.call_limit

    def usage_unit_price(self) -> Decimal | None:
        """The price of one usage-priced call in minor units (pay-per-use, or overage past the limit)."""
        price = self.overage_price_per_call if self.overage else self.price_per_call
        if self.plan_type == "free" or price is None:
            return None
        return Decimal(price).scaleb(exponent(self.currency))

    def usage_spend(self, calls: int) -> int:
        """Estimated usage-priced spend of `calls` in the period, minor units (as the usage estimate)."""
        if self.overage:
            price = Decimal(self.overage_price_per_call or 0)
            return overage_amount(self.currency, price, self.call_limit, calls)
        unit = self.usage_unit_price()
        if unit is None:
            return 0
        return int((unit * calls).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def cap_calls(self) -> int | None:
        """The most calls in a period whose usage spend stays within the monthly spend cap."""
        if self.monthly_spend_cap is None:
            return None
        unit = self.usage_unit_price()
        if unit is None or unit <= 0:
            return None
        cap = self.monthly_spend_cap
        billable = int(((Decimal(cap) + Decimal("0.5")) / unit).to_integral_value(rounding=ROUND_FLOOR))
        while billable > 0 and int((unit * billable).quantize(Decimal(1), rounding=ROUND_HALF_UP)) > cap:
            billable -= 1
        return billable + ((self.call_limit or 0) if self.overage else 0)
