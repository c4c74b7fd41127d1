"""Small factories that insert rows directly, for tests of read paths (invoices, analytics)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.consumers.service import consumer_id_for
from app.models import (
    Api,
    Consumer,
    Earning,
    Invoice,
    PricingPlan,
    PricingPlanVersion,
    Subscription,
    UsageRecord,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
# The commission the earnings rows of these tests are booked at (the platform's default).
RATE = Decimal("0.20")


async def made_before_the_overage_meter_item(engine: AsyncEngine, plan_id: str) -> None:
    """Makes an overage plan's versions as they were before overage was billed through a meter
    item: subscriptions made on them get no such item (their overage is an invoice line)."""
    async with engine.begin() as connection:
        await connection.execute(
            update(PricingPlanVersion)
            .where(PricingPlanVersion.plan_id == uuid.UUID(plan_id))
            .values(stripe_overage_price_id=None)
        )


async def add(engine: AsyncEngine, *rows: object) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        for row in rows:
            session.add(row)
            await session.flush()


def consumer(user_id: str | None = None, **fields: Any) -> Consumer:
    user_id = user_id or f"user-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {
        "id": consumer_id_for(user_id),
        "user_id": user_id,
        "email": f"{user_id}@example.com",
        "stripe_customer_id": f"cus_{uuid.uuid4().hex[:14]}",
    }
    values.update(fields)
    return Consumer(**values)


def api(creator_id: str, api_id: str | None = None) -> Api:
    return Api(api_id=api_id or f"api-{uuid.uuid4().hex[:10]}", creator_id=creator_id)


def plan(
    api_row: Api,
    *,
    name: str = "Pro",
    plan_type: str = "subscription",
    currency: str = "usd",
    monthly_amount: int | None = 2900,
    price_per_call: Decimal | None = None,
) -> tuple[PricingPlan, PricingPlanVersion]:
    plan_row = PricingPlan(id=uuid.uuid4(), api_id=api_row.api_id, name=name, type=plan_type, features={})
    version = PricingPlanVersion(
        plan_id=plan_row.id,
        version=1,
        currency=currency,
        monthly_amount=monthly_amount,
        price_per_call=price_per_call,
    )
    return plan_row, version


def subscription(consumer_row: Consumer, plan_row: PricingPlan, **fields: Any) -> Subscription:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "consumer_id": consumer_row.id,
        "api_id": plan_row.api_id,
        "pricing_plan_id": plan_row.id,
        "plan_version": 1,
        "status": "active",
    }
    values.update(fields)
    return Subscription(**values)


def invoice(consumer_row: Consumer, **fields: Any) -> Invoice:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "stripe_invoice_id": f"in_{uuid.uuid4().hex[:14]}",
        "consumer_id": consumer_row.id,
        "number": f"INV-{uuid.uuid4().hex[:6].upper()}",
        "status": "paid",
        "currency": "usd",
        "amount_due": 2900,
        "amount_paid": 2900,
        "subtotal": 2900,
        "tax": 0,
        "total": 2900,
        "created_at": T0,
        "lines": [],
    }
    values.update(fields)
    return Invoice(**values)


def earning(
    plan_row: PricingPlan, invoice_row: Invoice, creator_id: str, gross: int, commission: int, **fields: Any
) -> Earning:
    values: dict[str, Any] = {
        "creator_id": creator_id,
        "api_id": plan_row.api_id,
        "plan_id": plan_row.id,
        "invoice_id": invoice_row.id,
        "currency": invoice_row.currency,
        "gross_amount": gross,
        "commission_amount": commission,
        "net_amount": gross - commission,
        "earned_at": invoice_row.created_at,
    }
    values.update(fields)
    return Earning(**values)


def usage(
    subscription_row: Subscription, window_start: datetime, successful: int, failed: int = 0
) -> UsageRecord:
    return UsageRecord(
        subscription_id=subscription_row.id,
        window_start=window_start,
        window_end=window_start + timedelta(hours=1),
        quantity=successful + failed,
        successful_calls=successful,
        failed_calls=failed,
    )
