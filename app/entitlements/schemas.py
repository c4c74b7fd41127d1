from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.plans.schemas import ApiId

Reason = Literal[
    "ok",
    "no_subscription",
    "not_active",
    "suspended",
    "quota_exhausted",
    "spend_cap_reached",
    "rate_limited",
    "unavailable",
]
ApiKeyId = Annotated[str, Field(min_length=1, max_length=255)]
# One check may count up to this many calls at once (a gateway batching its own).
MAX_TRACK = 1_000_000
MAX_TRACK_BATCH = 1000


class _Subject(BaseModel):
    """Whose calls: an API key id, or a subscription id, on an API."""

    model_config = ConfigDict(extra="forbid")

    api_key_id: ApiKeyId | None = Field(
        None, description="The caller's API key id (or send `subscription_id`)"
    )
    subscription_id: uuid.UUID | None = Field(None, description="The subscription (or send `api_key_id`)")
    api_id: ApiId = Field(description="The API being called")

    @model_validator(mode="after")
    def _one_subject(self) -> _Subject:
        if (self.api_key_id is None) == (self.subscription_id is None):
            raise ValueError("send exactly one of api_key_id and subscription_id")
        return self


class CheckRequest(_Subject):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"api_key_id": "key_123", "api_id": "demo-weather", "track": 1}]},
    )

    track: Annotated[int, Field(ge=1, le=MAX_TRACK)] | None = Field(
        None, description="Count this many calls when they are allowed (all or none)"
    )


class CheckResult(BaseModel):
    allowed: bool = Field(description="The call may be made now")
    reason: Reason = Field(description="`ok`, or why the call is refused")
    subscription_id: uuid.UUID | None = Field(None, description="The subscription that holds the key, if any")
    remaining: int | None = Field(None, description="Calls left under the limit named by `limit`")
    limit: int | None = Field(
        None,
        description="The period's call limit (included calls with overage), or the refusing rate window's",
    )
    used: int | None = Field(None, description="Calls counted in the current period")
    reset_at: datetime | None = Field(None, description="When `remaining` starts over")
    overage: bool = Field(False, description="The call is past the included calls and billed as overage")
    period_start: datetime | None = Field(None, description="Start of the subscription's current period")
    period_end: datetime | None = Field(None, description="End of the subscription's current period")
    degraded: bool = Field(False, description="Answered by the Redis-down policy, without counters")


class TrackItem(_Subject):
    count: Annotated[int, Field(ge=1, le=MAX_TRACK, description="Calls made")]


class TrackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"calls": [{"api_key_id": "key_123", "api_id": "demo-weather", "count": 40}]}]
        },
    )

    calls: Annotated[
        list[TrackItem], Field(min_length=1, max_length=MAX_TRACK_BATCH, description="Up to 1,000 items")
    ]


class TrackResult(BaseModel):
    subscription_id: uuid.UUID | None = Field(description="The item's subscription (null: unknown key)")
    api_id: str = Field(description="The item's API")
    counted: int = Field(description="Calls counted (0 for a key billing does not know)")
    used: int | None = Field(None, description="The period's count after this item")
    remaining: int | None = Field(None, description="Calls left under the period's call limit")
    overage: bool = Field(False, description="The period is past its included calls")


class TrackResponse(BaseModel):
    tracked: int = Field(description="Calls counted")
    results: list[TrackResult] = Field(description="One per item, in the batch's order")


class EntitlementOut(BaseModel):
    subscription_id: uuid.UUID = Field(description="The subscription")
    consumer_id: uuid.UUID = Field(description="Its consumer")
    api_id: str = Field(description="Its API")
    api_key_id: str | None = Field(description="Its API key id, once issued")
    status: str = Field(description="The subscription's status")
    suspended: bool = Field(description="Dunning suspended the key")
    allowed: bool = Field(description="Calls may be made at all (status and suspension)")
    plan_id: uuid.UUID = Field(description="The plan")
    plan_version: int = Field(description="The plan version subscribed to")
    plan_type: str = Field(description="`free`, `subscription` or `pay_per_use`")
    currency: str = Field(description="The plan's currency")
    call_limit: int | None = Field(description="Calls per period (included calls with overage)")
    hard_limit: bool = Field(description="`call_limit` refuses calls (false: overage is billed)")
    overage_price_per_call: str | None = Field(
        description="Price of a call past `call_limit` (decimal string, major units); null: hard limit"
    )
    monthly_spend_cap: int | None = Field(
        description="The consumer's cap on usage-priced spend per period, minor units"
    )
    spend_cap_calls: int | None = Field(description="Calls the spend cap allows in the period")
    rate_limit_per_minute: int | None = Field(description="Calls per minute (UTC window)")
    rate_limit_per_day: int | None = Field(description="Calls per day (UTC window)")
    rate_limit_per_month: int | None = Field(description="Calls per calendar month (UTC)")
    period_start: datetime = Field(description="Start of the current period")
    period_end: datetime = Field(description="End of the current period")
    used: int = Field(description="Calls counted in the current period")


class EntitlementList(BaseModel):
    entitlements: list[EntitlementOut] = Field(description="This page's entitlements")
    next_cursor: str | None = Field(description="`cursor` of the next page; null on the last")


class SpendCapUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"monthly_spend_cap": 5000}]})

    monthly_spend_cap: Annotated[int, Field(ge=0, le=10**12)] | None = Field(
        description="Most the period's pay-per-use and overage charges may reach, in minor units; null: none"
    )


class SpendCapOut(BaseModel):
    subscription_id: uuid.UUID = Field(description="The subscription")
    monthly_spend_cap: int | None = Field(description="The cap in minor units; null: none")
    currency: str = Field(description="The plan's currency")
    estimated_usage_amount: int | None = Field(
        description="The period's usage-priced spend so far, minor units (null: counters unavailable)"
    )
