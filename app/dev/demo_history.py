"""Demo consumers with a history, so a creator's dashboard shows numbers on the first start.

Each demo consumer registers, gets a name and billing address on its Stripe customer (as
Checkout and the portal collect them) and subscribes with the test card through the same
services the API uses, so its customer, card and subscription are real in the emulator. What
lies before today cannot be made in Stripe after the fact, so the history is written as the
invoice mirror and the usage worker would have stored it: 60 ended UTC days of usage, and one
paid invoice per ended month (Stripe ids `in_demo_...`, numbered from our own sequence, earnings
booked by the one booking rule). Running it again adds nothing.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as day_start
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.auth import Principal
from app.config import Settings
from app.consumers.service import ConsumerService
from app.db.unit_of_work import unit_of_work
from app.earnings.booking import book_invoice_earnings
from app.integrations.metering import MeteringClient
from app.invoices.numbering import next_invoice_number
from app.models import Invoice, PricingPlan, PricingPlanVersion, Subscription, UsageRecord
from app.outbox.service import Outbox
from app.payment_methods.service import PaymentMethodService
from app.stripe import StripeGateway
from app.subscriptions.schemas import SubscriptionCreate
from app.subscriptions.service import SubscriptionService

HISTORY_DAYS = 60
MONTH_DAYS = 30
DEMO_CARD = "pm_card_visa"


@dataclass(frozen=True)
class DemoConsumer:
    user_id: str
    name: str
    address: dict[str, str]
    api_id: str
    plan: str
    calls_per_day: int  # on average; every day differs a little


DEMO_CONSUMERS = (
    DemoConsumer(
        "demo-alice",
        "Alice Martin",
        {"line1": "12 Rue de la Paix", "postal_code": "75002", "city": "Paris", "country": "FR"},
        "demo-geocoder",
        "Business",
        420,
    ),
    DemoConsumer(
        "demo-bob",
        "Okafor Logistics Ltd",
        {"line1": "5 Harbour Road", "postal_code": "D02 X285", "city": "Dublin", "country": "IE"},
        "demo-weather",
        "Pay as you go",
        2600,
    ),
    DemoConsumer(
        "demo-carol",
        "Carol Nguyen",
        {
            "line1": "300 Pine Street",
            "city": "Seattle",
            "state": "WA",
            "postal_code": "98101",
            "country": "US",
        },
        "demo-geocoder",
        "Metered",
        1500,
    ),
    DemoConsumer(
        "demo-dave",
        "Dave Schmidt",
        {"line1": "Torstrasse 9", "postal_code": "10119", "city": "Berlin", "country": "DE"},
        "demo-weather",
        "Free",
        60,
    ),
)


def _midnight(day: datetime) -> datetime:
    return datetime.combine(day.date(), day_start.min, tzinfo=UTC)


def daily_calls(demo: DemoConsumer, days: list[datetime]) -> list[tuple[datetime, int, int]]:
    """(day, successful, failed) per day: the same numbers on every machine for one consumer."""
    rng = random.Random(demo.user_id)  # noqa: S311  (demo numbers, not security)
    out = []
    for index, day in enumerate(days):
        trend = 0.75 + 0.5 * index / max(len(days) - 1, 1)  # usage grows over the two months
        weekend = 0.6 if day.weekday() >= 5 else 1.0
        total = int(demo.calls_per_day * trend * weekend * rng.uniform(0.8, 1.2))
        failed = int(total * rng.uniform(0.005, 0.03))
        out.append((day, total - failed, failed))
    return out


def _line(
    plan: PricingPlan, version: PricingPlanVersion, start: datetime, end: datetime, calls: int
) -> dict[str, Any]:
    if plan.type == "pay_per_use":
        assert version.price_per_call is not None  # noqa: S101  (a pay-per-use version has one)
        unit = version.price_per_call * 100
        amount = int((unit * calls).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        quantity, description = calls, f"{calls:,} calls x {plan.name}"
    else:
        unit = Decimal(version.monthly_amount or 0)
        amount, quantity, description = int(unit), 1, f"1 x {plan.name} (monthly)"
    return {
        "description": description,
        "plan_id": str(plan.id),
        "plan_name": plan.name,
        "price_id": version.stripe_price_id,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "quantity": quantity,
        "unit_amount": format(unit.normalize(), "f"),
        "amount": amount,
        "tax": 0,
        "currency": version.currency,
        "discount": 0,
    }


async def _history(
    session: AsyncSession, settings: Settings, demo: DemoConsumer, subscription: Subscription
) -> tuple[int, int]:
    """Write the usage and paid invoices of the 60 days before today; returns (days, invoices)."""
    plan, version = (
        await session.execute(
            select(PricingPlan, PricingPlanVersion)
            .join(PricingPlanVersion, PricingPlanVersion.plan_id == PricingPlan.id)
            .where(PricingPlan.id == subscription.pricing_plan_id)
            .where(PricingPlanVersion.version == subscription.plan_version)
        )
    ).one()
    today = _midnight(clock.now())
    first = today - timedelta(days=HISTORY_DAYS)
    days = [first + timedelta(days=n) for n in range(HISTORY_DAYS)]
    calls = daily_calls(demo, days)
    await session.execute(
        insert(UsageRecord)
        .values(
            [
                {
                    "subscription_id": subscription.id,
                    "window_start": day,
                    "window_end": day + timedelta(days=1),
                    "quantity": ok + failed,
                    "successful_calls": ok,
                    "failed_calls": failed,
                    "reported_at": clock.now(),  # billed by the history invoices below
                }
                for day, ok, failed in calls
            ]
        )
        .on_conflict_do_nothing()
    )
    subscription.started_at = first
    if plan.type == "free":
        return len(days), 0
    invoices = 0
    for month in range(HISTORY_DAYS // MONTH_DAYS):
        start = first + timedelta(days=month * MONTH_DAYS)
        end = start + timedelta(days=MONTH_DAYS)
        billed = sum(ok for day, ok, _ in calls if start <= day < end)
        line = _line(plan, version, start, end, billed)
        paid_at = min(end + timedelta(hours=1), clock.now())
        invoice = Invoice(
            id=uuid.uuid4(),
            stripe_invoice_id=f"in_demo_{uuid.uuid5(subscription.id, str(month)).hex[:16]}",
            consumer_id=subscription.consumer_id,
            subscription_id=subscription.id,
            number=await next_invoice_number(session, settings.invoice_issuer_name),
            status="paid",
            currency=version.currency,
            amount_due=line["amount"],
            amount_paid=line["amount"],
            subtotal=line["amount"],
            tax=0,
            total=line["amount"],
            period_start=start,
            period_end=end,
            paid_at=paid_at,
            created_at=end,
            lines=[line],
            customer_name=demo.name,
            customer_address=demo.address,
            description=f"{demo.api_id}: {plan.name}",
        )
        session.add(invoice)
        await session.flush()
        await book_invoice_earnings(session, invoice, settings.platform_commission)
        invoices += 1
    return len(days), invoices


async def seed_history(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    http: httpx.AsyncClient,
) -> list[str]:
    """Create the demo consumers that are missing, each with its subscription and history."""
    lines: list[str] = []
    for demo in DEMO_CONSUMERS:
        principal = Principal(user_id=demo.user_id, email=f"{demo.user_id}@demo.example", role="consumer")
        async with unit_of_work(sessionmaker) as session:
            consumers = ConsumerService(session, stripe)
            consumer, created = await consumers.register(principal)
            if not created:
                continue
            assert consumer.stripe_customer_id is not None  # noqa: S101  (register made it)
            await stripe.update_customer_details(
                consumer.stripe_customer_id,
                name=demo.name,
                address=demo.address,
                idempotency_key=f"demo-customer-details:{consumer.id}",
            )
            plan = (
                await session.execute(
                    select(PricingPlan).where(
                        PricingPlan.api_id == demo.api_id, PricingPlan.name == demo.plan
                    )
                )
            ).scalar_one()
            service = SubscriptionService(
                session,
                stripe,
                Outbox(session, None),
                MeteringClient(http, settings),
                consumers=consumers,
                cards=PaymentMethodService(session, stripe, consumers),
            )
            out = await service.create(
                principal,
                SubscriptionCreate(
                    api_id=demo.api_id,
                    pricing_plan_id=plan.id,
                    payment_method_id=None if plan.type == "free" else DEMO_CARD,
                ),
            )
            subscription = await session.get(Subscription, out.id)
            assert subscription is not None  # noqa: S101  (created just above)
            days, invoices = await _history(session, settings, demo, subscription)
        lines.append(
            f"demo consumer {demo.user_id}: {demo.plan} on {demo.api_id}, "
            f"{days} days of usage, {invoices} paid invoices"
        )
    return lines
