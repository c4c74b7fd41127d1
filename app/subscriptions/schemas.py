from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field

from app.models.subscription import ApiKeyStatus
from app.payment_methods.schemas import StripePaymentMethodId
from app.plans.schemas import ApiId, PlanOut

SubscriptionStatus = Literal["active", "cancelled", "past_due", "trial", "incomplete", "incomplete_expired"]


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "api_id": "demo-weather",
                    "pricing_plan_id": "8c1f3e0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
                    "payment_method_id": "pm_card_visa",
                },
                {
                    "api_id": "demo-weather",
                    "pricing_plan_id": "8c1f3e0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
                    "checkout": True,
                    "success_url": "https://marketplace.example/subscribed",
                    "cancel_url": "https://marketplace.example/plans",
                },
            ]
        },
    )

    api_id: ApiId = Field(description="The marketplace API to subscribe to")
    pricing_plan_id: uuid.UUID = Field(description="One of that API's active plans")
    payment_method_id: StripePaymentMethodId | None = Field(
        None,
        description="A card from Stripe.js (`pm_...`), attached first; omitted: the default card",
    )
    checkout: bool = Field(
        False, description="True: pay on a Stripe Checkout page instead of with a stored card"
    )
    success_url: Annotated[AnyHttpUrl, Field(max_length=2000)] | None = Field(
        None, description="With checkout: where Stripe sends the user after paying"
    )
    cancel_url: Annotated[AnyHttpUrl, Field(max_length=2000)] | None = Field(
        None, description="With checkout: where Stripe sends the user when they cancel"
    )


class SubscriptionCancel(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"immediately": False}]})

    immediately: bool = Field(
        False, description="True ends it now; false (default) at the end of the paid period"
    )


class SubscriptionUpgrade(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"new_pricing_plan_id": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"}]},
    )

    new_pricing_plan_id: uuid.UUID = Field(description="Another plan of the same API")
    proration_date: AwareDatetime | None = Field(
        None,
        description=(
            "The preview's `proration_date`, sent back so the charge is the amount the preview showed"
            " (at most 10 minutes old); without it the change is prorated as of now"
        ),
    )


class SubscriptionOut(BaseModel):
    id: uuid.UUID = Field(description="The subscription id (UUID)")
    consumer_id: uuid.UUID = Field(description="The subscribing consumer")
    api_id: str = Field(description="The subscribed marketplace API")
    pricing_plan_id: uuid.UUID = Field(description="The plan subscribed to")
    pricing_plan: PlanOut = Field(description="The plan, as of the version the subscriber holds")
    api_key_id: str | None = Field(
        None, description="The key issued by the API key service; null while it is still being issued"
    )
    api_key_status: ApiKeyStatus = Field(
        "none",
        description=(
            "`issuing` while the API key service is still creating the key (ask again shortly), `issued`, "
            "`suspended` (past due), `revoked` (ended) or `none` (ended before a key was issued). The key "
            "itself is shown by the marketplace's API key service, never by billing"
        ),
    )
    stripe_subscription_id: str | None = Field(
        None, description="The Stripe subscription (`sub_...`); null on free plans"
    )
    status: SubscriptionStatus = Field(
        description="`active`, `trial`, `past_due`, `incomplete`, `incomplete_expired` or `cancelled`"
    )
    started_at: datetime = Field(description="When the subscription was created (ISO 8601, UTC)")
    cancelled_at: datetime | None = Field(None, description="When it was cancelled, if it was")
    expires_at: datetime | None = Field(
        None, description="When access ends (the period end of a cancelled subscription)"
    )
    current_period_start: datetime | None = Field(None, description="Start of the current billing period")
    current_period_end: datetime | None = Field(None, description="End of the current billing period")
    trial_end: datetime | None = Field(None, description="End of the free trial, if any")
    cancel_at_period_end: bool = Field(description="True when it ends at `current_period_end`")
    client_secret: str | None = Field(
        None,
        description="With status `incomplete`: the PaymentIntent secret for Stripe.js `confirmCardPayment`",
    )
    checkout_url: str | None = Field(
        None, description="With checkout: the Stripe Checkout page to send the user to"
    )


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut] = Field(description="The caller's subscriptions, newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class PreviewLine(BaseModel):
    description: str | None = Field(description="What the line charges or credits")
    amount: int = Field(
        description="Amount in integer minor units of `currency` (cents for usd); negative for a credit"
    )
    currency: str = Field(description="Lowercase ISO 4217 currency")
    proration: bool = Field(description="True for a proration of the current period")
    period_start: datetime | None = Field(description="Start of the period the line covers")
    period_end: datetime | None = Field(description="End of the period the line covers")


class UpgradePreview(BaseModel):
    amount_due: int = Field(
        description="What the change would invoice now, in integer minor units of `currency` (cents for usd)"
    )
    currency: str = Field(description="Lowercase ISO 4217 currency")
    lines: list[PreviewLine] = Field(description="The invoice lines Stripe would create")
    proration_date: datetime | None = Field(
        None,
        description=(
            "The moment Stripe prorated this preview at (null when nothing is prorated): send it back"
            " with the upgrade to be charged exactly `amount_due`"
        ),
    )


class UsageOut(BaseModel):
    subscription_id: uuid.UUID = Field(description="The subscription")
    period_start: datetime = Field(description="Start of the current billing period")
    period_end: datetime = Field(description="End of the current billing period")
    total_calls: int = Field(description="Calls in the period (count)")
    successful_calls: int = Field(description="Calls that succeeded (count)")
    failed_calls: int = Field(description="Calls that failed (count)")
    call_limit: int | None = Field(description="Calls included per period (count); null means unlimited")
    remaining_calls: int | None = Field(description="Included calls left (count); null when unlimited")
    estimated_amount: int = Field(
        description="The period's charge so far, in integer minor units of `currency` (cents for usd)"
    )
    currency: str = Field(description="Lowercase ISO 4217 currency")
    # False when the metering service did not answer: the counts are then our stored records only.
    live: bool = Field(
        description="False when the metering service did not answer: counts are our stored records only"
    )
    # Beyond the contract: the period's calls exceed the plan's call limit.
    over_limit: bool = Field(description="True when the period's calls exceed the plan's call limit")
