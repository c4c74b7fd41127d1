from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        None,
        description="The API key id the call came with (issued by the API key service), or `subscription_id`",
    )
    subscription_id: uuid.UUID | None = Field(
        None, description="The subscription id (UUID), instead of `api_key_id`"
    )
    api_id: ApiId = Field(description="The marketplace API being called")

    @model_validator(mode="after")
    def _one_subject(self) -> _Subject:
        if (self.api_key_id is None) == (self.subscription_id is None):
            raise ValueError("send exactly one of api_key_id and subscription_id")
        return self


class CheckRequest(_Subject):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"api_key_id": "key_8f3a2c", "api_id": "demo-weather", "track": 1},
                {"subscription_id": "8c1f3e0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b", "api_id": "demo-weather"},
            ]
        }
    )

    track: Annotated[int, Field(ge=1, le=MAX_TRACK)] | None = Field(
        None, description="Count this many calls when they are allowed (all or none)"
    )


_CHECK_FIELDS = frozenset(CheckRequest.model_fields)
_API_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # ApiId's pattern
_KEY_ID_MAX = 255  # ApiKeyId's max_length


def _lean_check(data: Any) -> CheckRequest | None:
    """The plain well-formed body, read without the model; None for anything else (the model decides).

    Accepts only what `CheckRequest` accepts, with the same values: exact JSON types, a canonical
    UUID, the same bounds (tests/test_entitlement_hot_path.py holds the two to agreement).
    """
    if type(data) is not dict or not data.keys() <= _CHECK_FIELDS:
        return None
    api_id, key, subscription, track = (
        data.get("api_id"),
        data.get("api_key_id"),
        data.get("subscription_id"),
        data.get("track"),
    )
    if type(api_id) is not str or _API_ID.fullmatch(api_id) is None:
        return None
    if track is not None and (type(track) is not int or not 1 <= track <= MAX_TRACK):
        return None
    subscription_id: uuid.UUID | None = None
    if key is not None:
        if subscription is not None or type(key) is not str or not 1 <= len(key) <= _KEY_ID_MAX:
            return None
    elif type(subscription) is str and len(subscription) == 36:
        try:
            subscription_id = uuid.UUID(subscription)
        except ValueError:
            return None
        if str(subscription_id) != subscription.lower():
            return None
    else:
        return None
    return CheckRequest.model_construct(
        api_key_id=key, subscription_id=subscription_id, api_id=api_id, track=track
    )


def parse_check_request(raw: bytes) -> CheckRequest:
    """The check's body: the common case parsed lean (orjson, no model validation); anything
    else validated by `CheckRequest`, whose errors answer the usual 422 naming the field."""
    try:
        lean = _lean_check(orjson.loads(raw))
    except orjson.JSONDecodeError:
        lean = None
    if lean is not None:
        return lean
    try:
        return CheckRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


# The check's body as OpenAPI documents it (the route reads the body itself, see the router).
CHECK_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CheckRequest.model_json_schema()}},
    }
}


class CheckResult(BaseModel):
    allowed: bool = Field(description="True when the calls may be made now (with `track`, they were counted)")
    reason: Reason = Field(
        description=(
            "`ok`, or why the calls are refused: `no_subscription`, `not_active`, `suspended`,"
            " `quota_exhausted`, `spend_cap_reached`, `rate_limited`; `unavailable` when the counters"
            " cannot be read and the policy fails closed"
        )
    )
    subscription_id: uuid.UUID | None = Field(
        None,
        description="The subscription answered for; null when none matched or the Redis-down policy answered",
    )
    remaining: int | None = Field(None, description="Calls left under the limit named by `limit`")
    limit: int | None = Field(
        None,
        description="The period's call limit (included calls with overage), or the refusing rate window's",
    )
    used: int | None = Field(None, description="Calls counted in the current period")
    reset_at: datetime | None = Field(None, description="When `remaining` starts over")
    overage: bool = Field(False, description="The call is past the included calls and billed as overage")
    period_start: datetime | None = Field(
        None, description="Start of the current billing period, the one `used` counts (ISO 8601, UTC)"
    )
    period_end: datetime | None = Field(
        None,
        description="End of the current billing period (ISO 8601, UTC); the period counter restarts there",
    )
    degraded: bool = Field(False, description="Answered by the Redis-down policy, without counters")


class TrackItem(_Subject):
    count: Annotated[int, Field(ge=1, le=MAX_TRACK)] = Field(
        description="Calls to count for this key or subscription on this API (count, 1-1,000,000)"
    )


class TrackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "calls": [
                        {"api_key_id": "key_8f3a2c", "api_id": "demo-weather", "count": 120},
                        {
                            "subscription_id": "8c1f3e0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
                            "api_id": "demo-weather",
                            "count": 3,
                        },
                    ]
                }
            ]
        },
    )

    calls: Annotated[list[TrackItem], Field(min_length=1, max_length=MAX_TRACK_BATCH)] = Field(
        description="The calls to count, 1-1000 items (each counted whatever the limits)"
    )


class TrackResult(BaseModel):
    subscription_id: uuid.UUID | None = Field(
        description="The item's subscription: as sent, or its API key's; null when none matched"
    )
    api_id: str = Field(description="The API of the item, as sent")
    counted: int = Field(
        description="Calls counted for the item (count); 0 when no subscription on that API matched"
    )
    used: int | None = Field(
        None, description="Calls counted in the subscription's current period, the item's included (count)"
    )
    remaining: int | None = Field(
        None,
        description="Included calls left in the period (count, at least 0); null: no call limit or no match",
    )
    overage: bool = Field(
        False, description="The period's count is past the included calls, billed at the overage price"
    )


class TrackResponse(BaseModel):
    tracked: int = Field(description="Calls counted")
    results: list[TrackResult] = Field(description="One result per item of `calls`, in the same order")


class EntitlementOut(BaseModel):
    subscription_id: uuid.UUID = Field(description="The subscription id (UUID)")
    consumer_id: uuid.UUID = Field(description="The subscribing consumer (UUID)")
    api_id: str = Field(description="The subscribed marketplace API")
    api_key_id: str | None = Field(description="The subscription's API key id; null while it is being issued")
    status: str = Field(description="`active`, `trial`, `past_due` or `incomplete` (live subscriptions only)")
    suspended: bool = Field(description="Dunning suspended the API key: calls are refused with `suspended`")
    allowed: bool = Field(description="Calls may be made at all (status and suspension)")
    plan_id: uuid.UUID = Field(description="The plan subscribed to (UUID)")
    plan_version: int = Field(description="The plan version the subscriber holds")
    plan_type: str = Field(description="`free`, `subscription` or `pay_per_use`")
    currency: str = Field(description="Lowercase ISO 4217 currency of the prices and the spend cap")
    call_limit: int | None = Field(
        description="Calls included per billing period (count); null means unlimited"
    )
    hard_limit: bool = Field(description="`call_limit` refuses calls (false: overage is billed)")
    overage_price_per_call: str | None = Field(
        description=(
            "Price of each call past `call_limit`, in major units of `currency` as a decimal string"
            ' (`"0.00200000"`); null means the limit is hard'
        )
    )
    monthly_spend_cap: int | None = Field(
        description="The consumer's cap on the period's usage-priced spend, integer minor units; null: none"
    )
    spend_cap_calls: int | None = Field(description="Calls the spend cap allows in the period")
    rate_limit_per_minute: int | None = Field(
        description="Most calls per UTC minute (count); null means no limit"
    )
    rate_limit_per_day: int | None = Field(description="Most calls per UTC day (count); null means no limit")
    rate_limit_per_month: int | None = Field(
        description="Most calls per UTC calendar month (count); null means no limit"
    )
    period_start: datetime = Field(description="Start of the current billing period (ISO 8601, UTC)")
    period_end: datetime = Field(description="End of the current billing period (ISO 8601, UTC)")
    used: int = Field(description="Calls counted in the current period (count)")


class EntitlementList(BaseModel):
    entitlements: list[EntitlementOut] = Field(description="Live subscriptions, ordered by subscription id")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class SpendCapUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"monthly_spend_cap": 5000}, {"monthly_spend_cap": None}]},
    )

    monthly_spend_cap: Annotated[int, Field(ge=0, le=10**12)] | None = Field(
        description="Most the period's pay-per-use and overage charges may reach, in minor units; null: none"
    )


class SpendCapOut(BaseModel):
    subscription_id: uuid.UUID = Field(description="The subscription id (UUID)")
    monthly_spend_cap: int | None = Field(
        description="The cap now set, in integer minor units of `currency` (cents for usd); null: none"
    )
    currency: str = Field(description="Lowercase ISO 4217 currency of the cap")
    estimated_usage_amount: int | None = Field(
        description="The period's usage-priced spend so far, minor units (null: counters unavailable)"
    )
