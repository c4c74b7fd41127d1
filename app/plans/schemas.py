from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.money import CURRENCIES, JsonDecimal

PlanType = Literal["free", "subscription", "pay_per_use"]
ApiId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

MAX_MONTHLY_PRICE = Decimal("1000000")
MAX_PRICE_PER_CALL = Decimal("1000")
PRICE_PER_CALL_DECIMALS = 8
Limit = Annotated[int, Field(gt=0, le=2_000_000_000)]


def _check_currency(value: str) -> str:
    value = value.lower()
    if value not in CURRENCIES:
        raise ValueError(f"unknown or unsupported currency {value!r} (use an ISO 4217 code such as usd)")
    return value


class PlanTerms(BaseModel):
    """Fields shared by create and update; every one is checked, with the field named on error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    monthly_price: Decimal | None = Field(None, ge=0, le=MAX_MONTHLY_PRICE, allow_inf_nan=False)
    price_per_call: Decimal | None = Field(None, gt=0, le=MAX_PRICE_PER_CALL, allow_inf_nan=False)
    call_limit: Limit | None = None
    # Set on a subscription plan: calls past `call_limit` are allowed and billed at this price each.
    overage_price_per_call: Decimal | None = Field(None, gt=0, le=MAX_PRICE_PER_CALL, allow_inf_nan=False)
    rate_limit_per_minute: Limit | None = None
    rate_limit_per_day: Limit | None = None
    rate_limit_per_month: Limit | None = None
    trial_period_days: int | None = Field(None, ge=1, le=730)
    features: dict[str, Any] | None = None

    @field_validator("price_per_call", "overage_price_per_call")
    @classmethod
    def _per_call_precision(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and -value.as_tuple().exponent > PRICE_PER_CALL_DECIMALS:  # type: ignore[operator]
            raise ValueError(f"at most {PRICE_PER_CALL_DECIMALS} decimal places")
        return value


class PlanCreate(PlanTerms):
    name: Annotated[str, StringConstraints(min_length=1, max_length=120)]
    type: PlanType
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)] = "usd"

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _check_currency(value)


class PlanUpdate(PlanTerms):
    """PUT: the fields sent replace the plan's; a changed price makes a new version."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = None
    is_active: bool | None = None


class PlanOut(BaseModel):
    id: uuid.UUID
    api_id: str
    name: str
    type: PlanType
    monthly_price: JsonDecimal | None = None
    price_per_call: JsonDecimal | None = None
    call_limit: int | None = None
    overage_price_per_call: JsonDecimal | None = None
    rate_limit_per_minute: int | None = None
    rate_limit_per_day: int | None = None
    rate_limit_per_month: int | None = None
    trial_period_days: int | None = None
    features: dict[str, Any]
    currency: str
    is_active: bool
    version: int
    created_at: datetime


class PlanList(BaseModel):
    plans: list[PlanOut]
