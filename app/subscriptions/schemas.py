from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field

from app.payment_methods.schemas import StripePaymentMethodId
from app.plans.schemas import ApiId, PlanOut

SubscriptionStatus = Literal["active", "cancelled", "past_due", "trial", "incomplete", "incomplete_expired"]


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_id: ApiId
    pricing_plan_id: uuid.UUID
    payment_method_id: StripePaymentMethodId | None = None
    checkout: bool = False
    success_url: Annotated[AnyHttpUrl, Field(max_length=2000)] | None = None
    cancel_url: Annotated[AnyHttpUrl, Field(max_length=2000)] | None = None


class SubscriptionCancel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    immediately: bool = False


class SubscriptionUpgrade(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_pricing_plan_id: uuid.UUID
    # The preview's `proration_date`, sent back so the charge is the amount the preview showed
    # (at most 10 minutes old); without it the change is prorated as of now.
    proration_date: AwareDatetime | None = None


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    consumer_id: uuid.UUID
    api_id: str
    pricing_plan_id: uuid.UUID
    pricing_plan: PlanOut
    api_key_id: str | None = None
    stripe_subscription_id: str | None = None
    status: SubscriptionStatus
    started_at: datetime
    cancelled_at: datetime | None = None
    expires_at: datetime | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool
    client_secret: str | None = None
    checkout_url: str | None = None


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]
    next_cursor: str | None


class PreviewLine(BaseModel):
    description: str | None
    amount: int
    currency: str
    proration: bool
    period_start: datetime | None
    period_end: datetime | None


class UpgradePreview(BaseModel):
    amount_due: int
    currency: str
    lines: list[PreviewLine]
    # The moment Stripe prorated this preview at (null when nothing is prorated): send it back
    # with the upgrade to be charged exactly `amount_due`.
    proration_date: datetime | None = None


class UsageOut(BaseModel):
    subscription_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    total_calls: int
    successful_calls: int
    failed_calls: int
    call_limit: int | None
    remaining_calls: int | None
    estimated_amount: int
    currency: str
    # False when the metering service did not answer: the counts are then our stored records only.
    live: bool
    # Beyond the contract: the period's calls exceed the plan's call limit.
    over_limit: bool
