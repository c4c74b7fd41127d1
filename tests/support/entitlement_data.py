"""Rows and clients for the entitlement tests: a subscription on a plan, the gateway's headers."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import Subscription
from tests.support import rows
from tests.support.auth import bearer

GATEWAY_TOKEN = "gw-token-current-0123456789"
OLD_GATEWAY_TOKEN = "gw-token-previous-0123456789"
GATEWAY = bearer(GATEWAY_TOKEN)
PERIOD_START = datetime.fromisoformat("2026-03-10T12:00:00+00:00")
PERIOD_END = datetime.fromisoformat("2026-04-10T12:00:00+00:00")
# Business time in the entitlement tests (their `business_time` fixture), unless a test moves it.
IN_PERIOD = PERIOD_START + timedelta(days=3)


def gateway_settings(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "gateway_service_tokens": SecretStr(f"{GATEWAY_TOKEN},{OLD_GATEWAY_TOKEN}"),
        # Tests look at the next check right after a change: no per-process copy in between.
        "entitlements_local_snapshot_seconds": 0,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


async def entitled(
    engine: AsyncEngine,
    *,
    plan_type: str = "subscription",
    call_limit: int | None = None,
    price_per_call: Decimal | None = None,
    overage_price_per_call: Decimal | None = None,
    monthly_amount: int | None = 2900,
    rate_limit_per_minute: int | None = None,
    rate_limit_per_day: int | None = None,
    status: str = "active",
    period: tuple[datetime, datetime] | None = (PERIOD_START, PERIOD_END),
    spend_cap: int | None = None,
    user_id: str | None = None,
) -> Subscription:
    """A consumer subscribed to a fresh API's plan, with an API key id."""
    consumer = rows.consumer(user_id)
    api = rows.api(f"creator-{uuid.uuid4().hex[:8]}")
    plan, version = rows.plan(
        api,
        plan_type=plan_type,
        monthly_amount=monthly_amount if plan_type == "subscription" else None,
        price_per_call=price_per_call,
    )
    plan.rate_limit_per_minute = rate_limit_per_minute
    plan.rate_limit_per_day = rate_limit_per_day
    version.call_limit = call_limit
    version.overage_price_per_call = overage_price_per_call
    subscription = rows.subscription(
        consumer,
        plan,
        status=status,
        api_key_id=f"key_{uuid.uuid4().hex[:12]}",
        started_at=(period[0] if period else PERIOD_START) - timedelta(days=40),
        current_period_start=period[0] if period else None,
        current_period_end=period[1] if period else None,
        monthly_spend_cap=spend_cap,
    )
    await rows.add(engine, consumer, api, plan, version, subscription)
    return subscription


def check_body(subscription: Subscription, **fields: Any) -> dict[str, Any]:
    assert subscription.api_key_id is not None
    return {"api_key_id": subscription.api_key_id, "api_id": subscription.api_id, **fields}
