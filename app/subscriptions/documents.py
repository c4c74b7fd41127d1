"""The contract's Subscription as JSON, straight from a query row: the lean read path.

GET /subscriptions and GET /subscriptions/{id} are the hottest reads. They skip ORM objects and
pydantic (which would build, validate, and re-validate each nested object) and map each row once,
here, to the contract's fields in the schema's order, then to JSON with orjson. The bytes are the
ones `SubscriptionOut` serialises to (a test compares them for every shape of row), so the schema
stays the documentation and this module must follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from app.models.subscription import api_key_status_of
from app.money import from_minor, json_number

# The row's column names: the subscription's own, and the plan's and held version's with a prefix.
SUBSCRIPTION_FIELDS = (
    "id",
    "consumer_id",
    "api_id",
    "pricing_plan_id",
    "api_key_id",
    "api_key_suspended",
    "stripe_subscription_id",
    "status",
    "started_at",
    "cancelled_at",
    "expires_at",
    "current_period_start",
    "current_period_end",
    "trial_end",
    "cancel_at_period_end",
    "checkout_url",
    "created_at",
)
PLAN_FIELDS = (
    "id",
    "api_id",
    "name",
    "type",
    "rate_limit_per_minute",
    "rate_limit_per_day",
    "rate_limit_per_month",
    "trial_period_days",
    "features",
    "is_active",
    "created_at",
)
VERSION_FIELDS = (
    "version",
    "currency",
    "monthly_amount",
    "price_per_call",
    "call_limit",
    "overage_price_per_call",
)
_OPTIONS = orjson.OPT_UTC_Z  # UTC as "Z", as pydantic writes it


def subscription_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row (subscription, `plan_*` and `version_*` columns) as the contract's Subscription.

    Ids are written with `str()`: the driver's UUID type is its own, which orjson does not know."""
    currency = row["version_currency"]
    monthly_amount = row["version_monthly_amount"]
    price_per_call = row["version_price_per_call"]
    overage = row["version_overage_price_per_call"]
    status = row["status"]
    return {
        "id": str(row["id"]),
        "consumer_id": str(row["consumer_id"]),
        "api_id": row["api_id"],
        "pricing_plan_id": str(row["pricing_plan_id"]),
        "pricing_plan": {
            "id": str(row["plan_id"]),
            "api_id": row["plan_api_id"],
            "name": row["plan_name"],
            "type": row["plan_type"],
            "monthly_price": (
                json_number(from_minor(monthly_amount, currency)) if monthly_amount is not None else None
            ),
            "price_per_call": json_number(price_per_call.normalize()) if price_per_call is not None else None,
            "call_limit": row["version_call_limit"],
            "overage_price_per_call": json_number(overage.normalize()) if overage is not None else None,
            "rate_limit_per_minute": row["plan_rate_limit_per_minute"],
            "rate_limit_per_day": row["plan_rate_limit_per_day"],
            "rate_limit_per_month": row["plan_rate_limit_per_month"],
            "trial_period_days": row["plan_trial_period_days"],
            "features": row["plan_features"],
            "currency": currency,
            "is_active": row["plan_is_active"],
            "version": row["version_version"],
            "created_at": row["plan_created_at"],
        },
        "api_key_id": row["api_key_id"],
        "api_key_status": api_key_status_of(row["api_key_id"], status, suspended=row["api_key_suspended"]),
        "stripe_subscription_id": row["stripe_subscription_id"],
        "status": status,
        "started_at": row["started_at"],
        "cancelled_at": row["cancelled_at"],
        "expires_at": row["expires_at"],
        "current_period_start": row["current_period_start"],
        "current_period_end": row["current_period_end"],
        "trial_end": row["trial_end"],
        "cancel_at_period_end": row["cancel_at_period_end"],
        "client_secret": None,
        # A checkout page is only worth opening while the subscription waits for it.
        "checkout_url": row["checkout_url"] if status == "incomplete" else None,
    }


def dumps(document: object, schema: type[BaseModel]) -> bytes:
    """The document as JSON. Values orjson cannot write (an integer beyond 64 bits inside a plan's
    `features`) go through the schema instead, which writes the same text for everything else."""
    try:
        return orjson.dumps(document, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return through_schema(document, schema)


def through_schema(document: object, schema: type[BaseModel]) -> bytes:
    """The slow way to the same bytes: validate the document as the schema, then serialise it."""
    return schema.model_validate(document).model_dump_json().encode()
