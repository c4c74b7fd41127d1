"""Rows and Stripe payloads for webhook and worker tests, built small and explicit."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.models import Api, Consumer, PricingPlan, PricingPlanVersion, Subscription


@dataclass(frozen=True)
class World:
    """One consumer subscribed to one plan of one API, with its Stripe ids."""

    consumer_id: uuid.UUID
    customer: str
    api_id: str
    creator_id: str
    plan_id: uuid.UUID
    price: str
    subscription_id: uuid.UUID
    stripe_subscription: str
    plan_type: str
    extra: dict[str, Any] = field(default_factory=dict)


async def make_world(
    engine: AsyncEngine,
    *,
    plan_type: str = "subscription",
    monthly_amount: int | None = 2900,
    price_per_call: Decimal | None = None,
    call_limit: int | None = None,
    status: str = "incomplete",
    stripe_subscription: str | None = None,
    checkout_session: str | None = None,
    started_at: datetime | None = None,
    customer: str | None = None,
    key: str | None = None,
) -> World:
    key = key or uuid.uuid4().hex[:10]
    world = World(
        consumer_id=uuid.uuid5(uuid.NAMESPACE_URL, f"consumer:{key}"),
        customer=customer or f"cus_{key}",
        api_id=f"api-{key}",
        creator_id=f"creator-{key}",
        plan_id=uuid.uuid5(uuid.NAMESPACE_URL, f"plan:{key}"),
        price=f"price_{key}",
        subscription_id=uuid.uuid5(uuid.NAMESPACE_URL, f"sub:{key}"),
        stripe_subscription=stripe_subscription or f"sub_{key}",
        plan_type=plan_type,
    )
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add(Consumer(id=world.consumer_id, user_id=f"user-{key}", stripe_customer_id=world.customer))
        session.add(Api(api_id=world.api_id, creator_id=world.creator_id))
        await session.flush()
        session.add(PricingPlan(id=world.plan_id, api_id=world.api_id, name="Pro", type=plan_type))
        await session.flush()
        session.add(
            PricingPlanVersion(
                plan_id=world.plan_id,
                version=1,
                currency="usd",
                monthly_amount=monthly_amount if plan_type == "subscription" else None,
                price_per_call=price_per_call,
                call_limit=call_limit,
                stripe_price_id=world.price,
            )
        )
        await session.flush()
        session.add(
            Subscription(
                id=world.subscription_id,
                consumer_id=world.consumer_id,
                api_id=world.api_id,
                pricing_plan_id=world.plan_id,
                plan_version=1,
                status=status,
                stripe_subscription_id=None if checkout_session else world.stripe_subscription,
                stripe_checkout_session_id=checkout_session,
                started_at=started_at or datetime.now(UTC),
            )
        )
    return world


def event(
    event_type: str, obj: dict[str, Any], *, created: int, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": created,
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {"object": obj},
    }


def customer_created(**fields: Any) -> dict[str, Any]:
    """A `customer.created` event about a new customer, sent now: for tests of the webhook endpoint
    where what the event says does not matter. `fields` replace the event's own."""
    customer = {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer"}
    return {**event("customer.created", customer, created=int(time.time())), **fields}


def subscription_obj(
    world: World,
    status: str,
    *,
    period: tuple[int, int],
    canceled_at: int | None = None,
    cancel_at_period_end: bool = False,
    trial_end: int | None = None,
) -> dict[str, Any]:
    return {
        "id": world.stripe_subscription,
        "object": "subscription",
        "customer": world.customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "ended_at": canceled_at,
        "trial_end": trial_end,
        "metadata": {"subscription_id": str(world.subscription_id)},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{world.stripe_subscription[4:]}",
                    "price": {"id": world.price},
                    "current_period_start": period[0],
                    "current_period_end": period[1],
                }
            ],
        },
    }


def invoice_obj(
    world: World,
    invoice_id: str,
    status: str,
    *,
    amount: int = 2900,
    period: tuple[int, int],
    paid_at: int | None = None,
    tax: int = 0,
) -> dict[str, Any]:
    paid = status == "paid"
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": world.customer,
        "status": status,
        "number": f"INV-{invoice_id[-6:]}",
        "currency": "usd",
        "amount_due": amount + tax,
        "amount_paid": amount + tax if paid else 0,
        "subtotal": amount,
        "total": amount + tax,
        "total_taxes": [{"amount": tax}] if tax else [],
        "period_start": period[0],
        "period_end": period[1],
        "status_transitions": {"paid_at": paid_at if paid else None},
        "invoice_pdf": f"https://pay.stripe.test/{invoice_id}.pdf" if status != "draft" else None,
        "hosted_invoice_url": f"https://pay.stripe.test/{invoice_id}" if status != "draft" else None,
        "parent": {"subscription_details": {"subscription": world.stripe_subscription}},
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{invoice_id}",
                    "amount": amount,
                    "currency": "usd",
                    "description": "1 x Pro",
                    "quantity": 1,
                    "period": {"start": period[0], "end": period[1]},
                    "pricing": {"price_details": {"price": world.price}},
                    "parent": {"subscription_item_details": {"subscription": world.stripe_subscription}},
                }
            ],
        },
    }
