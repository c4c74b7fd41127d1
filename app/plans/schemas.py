from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.models import PricingPlan, PricingPlanVersion
from app.money import CURRENCIES, JsonDecimal, from_minor
from app.validation import bounded_json

PlanType = Literal["free", "subscription", "pay_per_use"]
ApiId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

MAX_MONTHLY_PRICE = Decimal("1000000")
MAX_PRICE_PER_CALL = Decimal("1000")
PRICE_PER_CALL_DECIMALS = 8
Limit = Annotated[int, Field(gt=0, le=2_000_000_000)]
# A plan's free-form features (`{"priority_support": true}`): small, shallow, short strings.
Features = Annotated[dict[str, Any], bounded_json(max_items=200, max_depth=4, max_chars=500)]


def _check_currency(value: str) -> str:
    value = value.lower()
    if value not in CURRENCIES:
        raise ValueError(f"unknown or unsupported currency {value!r} (use an ISO 4217 code such as usd)")
    return value


class PlanTerms(BaseModel):
    """Fields shared by create and update; every one is checked, with the field named on error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    monthly_price: Decimal | None = Field(
        None,
        ge=0,
        le=MAX_MONTHLY_PRICE,
        allow_inf_nan=False,
        description="Monthly price in major units (JSON number, `29` = 29.00); subscription plans only",
    )
    price_per_call: Decimal | None = Field(
        None,
        gt=0,
        le=MAX_PRICE_PER_CALL,
        allow_inf_nan=False,
        description="Price per call in major units (JSON number, `0.0015`), 8 decimals at most; pay_per_use",
    )
    call_limit: Limit | None = Field(
        None, description="Calls included per billing period (count); null means unlimited"
    )
    overage_price_per_call: Decimal | None = Field(
        None,
        gt=0,
        le=MAX_PRICE_PER_CALL,
        allow_inf_nan=False,
        description=(
            "Subscription plans with a `call_limit` only: calls past the limit are allowed and billed at"
            " this price each, in major units (JSON number); null means the limit is hard"
        ),
    )
    rate_limit_per_minute: Limit | None = Field(
        None, description="Most calls per minute (count); null means no limit"
    )
    rate_limit_per_day: Limit | None = Field(
        None, description="Most calls per UTC day (count); null means no limit"
    )
    rate_limit_per_month: Limit | None = Field(
        None, description="Most calls per billing month (count); null means no limit"
    )
    trial_period_days: int | None = Field(
        None, ge=1, le=730, description="Free trial length in days for new subscribers (paid plans only)"
    )
    features: Features | None = Field(
        None, description='Free-form feature flags shown on the plan, e.g. `{"priority_support": true}`'
    )

    @field_validator("price_per_call", "overage_price_per_call")
    @classmethod
    def _per_call_precision(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and -value.as_tuple().exponent > PRICE_PER_CALL_DECIMALS:  # type: ignore[operator]
            raise ValueError(f"at most {PRICE_PER_CALL_DECIMALS} decimal places")
        return value


class PlanCreate(PlanTerms):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Pro",
                    "type": "subscription",
                    "monthly_price": 29,
                    "call_limit": 100000,
                    "rate_limit_per_minute": 600,
                    "features": {"priority_support": True},
                },
                {"name": "Pay as you go", "type": "pay_per_use", "price_per_call": 0.0015},
            ]
        }
    )
    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] = Field(
        description="The plan's display name (1-120 characters)"
    )
    type: PlanType = Field(
        description="`free`, `subscription` (monthly price) or `pay_per_use` (price per call)"
    )
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)] = Field(
        "usd", description="Lowercase ISO 4217 currency of the prices (default `usd`)"
    )

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _check_currency(value)


class PlanUpdate(PlanTerms):
    """PUT: the fields sent replace the plan's; a changed price makes a new version."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"monthly_price": 39, "call_limit": 150000}]})

    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = Field(
        None, description="A new display name"
    )
    is_active: bool | None = Field(
        None, description="False hides the plan from new subscribers; existing ones keep it"
    )


class PlanOut(BaseModel):
    id: uuid.UUID = Field(description="The plan id (UUID)")
    api_id: str = Field(description="The marketplace API the plan belongs to")
    name: str = Field(description="The plan's display name")
    type: PlanType = Field(description="`free`, `subscription` or `pay_per_use`")
    monthly_price: JsonDecimal | None = Field(
        None, description="Monthly price in major units (JSON number, `29` = 29.00); subscription plans only"
    )
    price_per_call: JsonDecimal | None = Field(
        None,
        description="Price per call in major units (JSON number, `0.0015`), 8 decimals at most; pay_per_use",
    )
    call_limit: int | None = Field(
        None, description="Calls included per billing period (count); null means unlimited"
    )
    overage_price_per_call: JsonDecimal | None = Field(
        None, description="Price of each call past `call_limit` in major units; null means the limit is hard"
    )
    rate_limit_per_minute: int | None = Field(
        None, description="Most calls per minute (count); null means no limit"
    )
    rate_limit_per_day: int | None = Field(
        None, description="Most calls per UTC day (count); null means no limit"
    )
    rate_limit_per_month: int | None = Field(
        None, description="Most calls per billing month (count); null means no limit"
    )
    trial_period_days: int | None = Field(
        None, description="Free trial length in days for new subscribers (paid plans only)"
    )
    features: dict[str, Any] = Field(
        description='Free-form feature flags shown on the plan, e.g. `{"priority_support": true}`'
    )
    currency: str = Field(description="Lowercase ISO 4217 currency of the prices")
    is_active: bool = Field(description="False once the creator deactivated it")
    version: int = Field(
        description="Increases when a price or the call limit changes (subscribers keep their version)"
    )
    created_at: datetime = Field(description="When the plan was created (ISO 8601, UTC)")


class PlanList(BaseModel):
    plans: list[PlanOut] = Field(description="The API's plans")


def plan_out(plan: PricingPlan, version: PricingPlanVersion) -> PlanOut:
    """The contract's Plan: the plan's terms with the money terms of the given version."""
    return PlanOut(
        id=plan.id,
        api_id=plan.api_id,
        name=plan.name,
        type=plan.type,
        monthly_price=(
            from_minor(version.monthly_amount, version.currency)
            if version.monthly_amount is not None
            else None
        ),
        price_per_call=version.price_per_call.normalize() if version.price_per_call is not None else None,
        call_limit=version.call_limit,
        overage_price_per_call=(
            version.overage_price_per_call.normalize() if version.overage_price_per_call is not None else None
        ),
        rate_limit_per_minute=plan.rate_limit_per_minute,
        rate_limit_per_day=plan.rate_limit_per_day,
        rate_limit_per_month=plan.rate_limit_per_month,
        trial_period_days=plan.trial_period_days,
        features=plan.features,
        currency=version.currency,
        is_active=plan.is_active,
        version=version.version,
        created_at=plan.created_at,
    )
