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

    api_key_id: ApiKeyId | None = None
    subscription_id: uuid.UUID | None = None
    api_id: ApiId

    @model_validator(mode="after")
    def _one_subject(self) -> _Subject:
        if (self.api_key_id is None) == (self.subscription_id is None):
            raise ValueError("send exactly one of api_key_id and subscription_id")
        return self


class CheckRequest(_Subject):
    track: Annotated[int, Field(ge=1, le=MAX_TRACK)] | None = Field(
        None, description="Count this many calls when they are allowed (all or none)"
    )


class CheckResult(BaseModel):
    allowed: bool
    reason: Reason
    subscription_id: uuid.UUID | None = None
    remaining: int | None = Field(None, description="Calls left under the limit named by `limit`")
    limit: int | None = Field(
        None,
        description="The period's call limit (included calls with overage), or the refusing rate window's",
    )
    used: int | None = Field(None, description="Calls counted in the current period")
    reset_at: datetime | None = Field(None, description="When `remaining` starts over")
    overage: bool = Field(False, description="The call is past the included calls and billed as overage")
    period_start: datetime | None = None
    period_end: datetime | None = None
    degraded: bool = Field(False, description="Answered by the Redis-down policy, without counters")


class TrackItem(_Subject):
    count: Annotated[int, Field(ge=1, le=MAX_TRACK)]


class TrackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calls: Annotated[list[TrackItem], Field(min_length=1, max_length=MAX_TRACK_BATCH)]


class TrackResult(BaseModel):
    subscription_id: uuid.UUID | None
    api_id: str
    counted: int
    used: int | None = None
    remaining: int | None = None
    overage: bool = False


class TrackResponse(BaseModel):
    tracked: int = Field(description="Calls counted")
    results: list[TrackResult]


class EntitlementOut(BaseModel):
    subscription_id: uuid.UUID
    consumer_id: uuid.UUID
    api_id: str
    api_key_id: str | None
    status: str
    suspended: bool
    allowed: bool = Field(description="Calls may be made at all (status and suspension)")
    plan_id: uuid.UUID
    plan_version: int
    plan_type: str
    currency: str
    call_limit: int | None
    hard_limit: bool = Field(description="`call_limit` refuses calls (false: overage is billed)")
    overage_price_per_call: str | None
    monthly_spend_cap: int | None
    spend_cap_calls: int | None = Field(description="Calls the spend cap allows in the period")
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    rate_limit_per_month: int | None
    period_start: datetime
    period_end: datetime
    used: int


class EntitlementList(BaseModel):
    entitlements: list[EntitlementOut]
    next_cursor: str | None


class SpendCapUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_spend_cap: Annotated[int, Field(ge=0, le=10**12)] | None = Field(
        description="Most the period's pay-per-use and overage charges may reach, in minor units; null: none"
    )


class SpendCapOut(BaseModel):
    subscription_id: uuid.UUID
    monthly_spend_cap: int | None
    currency: str
    estimated_usage_amount: int | None = Field(
        description="The period's usage-priced spend so far, minor units (null: counters unavailable)"
    )
