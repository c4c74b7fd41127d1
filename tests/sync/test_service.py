"""`billing sync` against the Stripe emulator: drift repaired, dry runs, resume, one run at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.errors import Conflict
from app.models import (
    Consumer,
    Earning,
    Invoice,
    OutboxMessage,
    PaymentMethod,
    Subscription,
    SyncRun,
)
from tests.support.auth import Auth
from tests.support.journeys import register
from tests.support.stripe_side import price_of_plan
from tests.support.sync import sync_service


async def _default_card_at_stripe(stripe_http: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    """A card attached to `customer` and made its default at Stripe, behind our back."""
    card = (
        await stripe_http.post("/v1/payment_methods/pm_card_visa/attach", data={"customer": customer})
    ).json()
    await stripe_http.post(
        f"/v1/customers/{customer}", data={"invoice_settings[default_payment_method]": card["id"]}
    )
    return dict(card)


async def _stripe_subscription_with_row(
    client: httpx.AsyncClient, auth: Auth, stripe_http: httpx.AsyncClient, engine: AsyncEngine, status: str
) -> tuple[str, uuid.UUID]:
    """A paid plan, a registered consumer with a card, a Stripe subscription, and our row of it."""
    api_id = f"api-{uuid.uuid4().hex[:8]}"
    plan = await client.post(
        f"/api/v1/apis/{api_id}/plans",
        json={"name": "Pro", "type": "subscription", "monthly_price": 29},
        headers=auth("creator"),
    )
    consumer = (await client.post("/api/v1/consumers/register", headers=auth("consumer"))).json()
    customer = consumer["stripe_customer_id"]
    await _default_card_at_stripe(stripe_http, customer)
    price = await price_of_plan(engine, plan.json()["id"])
    our_id = uuid.uuid4()
    stripe_sub = (
        await stripe_http.post(
            "/v1/subscriptions",
            data={"customer": customer, "items[0][plan]": price, "metadata[subscription_id]": str(our_id)},
        )
    ).json()
    async with engine.begin() as connection:
        await connection.execute(
            insert(Subscription).values(
                id=our_id,
                consumer_id=uuid.UUID(consumer["consumer_id"]),
                api_id=api_id,
                pricing_plan_id=uuid.UUID(plan.json()["id"]),
                plan_version=1,
                status=status,
                stripe_subscription_id=stripe_sub["id"],
                cancel_at_period_end=False,
                api_key_suspended=False,
            )
        )
    return stripe_sub["id"], our_id


@pytest.fixture
async def behind(
    client: httpx.AsyncClient, auth: Auth, stripe_http: httpx.AsyncClient, engine: AsyncEngine
) -> tuple[str, uuid.UUID]:
    """A subscription Stripe bills (active) that our row still holds as incomplete: (its Stripe id, ours)."""
    return await _stripe_subscription_with_row(client, auth, stripe_http, engine, "incomplete")


async def test_sync_repairs_a_drifted_subscription_and_requests_its_key(
    behind: tuple[str, uuid.UUID], engine: AsyncEngine, settings: Settings
) -> None:
    stripe_id, our_id = behind
    run = await sync_service(engine, settings).run()
    assert run.status == "completed"
    assert run.report["subscriptions"]["changed"] >= 1
    assert any(stripe_id in d for d in run.report["subscriptions"]["differences"])
    async with engine.connect() as connection:
        row = (await connection.execute(select(Subscription).where(Subscription.id == our_id))).one()
        intents = (
            (
                await connection.execute(
                    select(OutboxMessage.kind).where(OutboxMessage.subscription_id == our_id)
                )
            )
            .scalars()
            .all()
        )
    assert row.status == "active"
    assert row.current_period_end is not None
    assert intents == ["create_api_key"]

    again = await sync_service(engine, settings).run()
    assert again.report["subscriptions"]["changed"] == 0


async def test_dry_run_reports_without_changing(
    behind: tuple[str, uuid.UUID], engine: AsyncEngine, settings: Settings
) -> None:
    _, our_id = behind
    run = await sync_service(engine, settings, dry_run=True).run()
    assert run.report["subscriptions"]["changed"] >= 1
    async with engine.connect() as connection:
        status = (
            await connection.execute(select(Subscription.status).where(Subscription.id == our_id))
        ).scalar()
        outbox = (await connection.execute(select(OutboxMessage))).all()
    assert status == "incomplete"
    assert outbox == []


@pytest.fixture
async def consumer(client: httpx.AsyncClient, auth: Auth) -> dict[str, Any]:
    """A consumer registered through our API, with its Stripe customer."""
    return await register(client, auth("consumer"))


async def test_customer_email_drift_is_repaired(
    consumer: dict[str, Any], stripe_http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await stripe_http.post(
        f"/v1/customers/{consumer['stripe_customer_id']}", data={"email": "new@example.com"}
    )
    await sync_service(engine, settings).run()
    async with engine.connect() as connection:
        email = (
            await connection.execute(
                select(Consumer.email).where(Consumer.id == uuid.UUID(consumer["consumer_id"]))
            )
        ).scalar()
    assert email == "new@example.com"


async def test_an_interrupted_run_resumes_after_its_cursor(engine: AsyncEngine, settings: Settings) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(SyncRun).values(
                id=uuid.uuid4(),
                status="interrupted",
                dry_run=False,
                cursor={"customers": "done"},
                report={"customers": {"seen": 7, "changed": 0, "unknown": 0, "differences": []}},
            )
        )
    run = await sync_service(engine, settings).run()
    assert run.status == "completed"
    assert run.report["customers"]["seen"] == 7  # not listed again
    assert "subscriptions" in run.report


async def test_two_syncs_at_once_run_one(engine: AsyncEngine, settings: Settings) -> None:
    results = await asyncio.gather(
        sync_service(engine, settings).run(), sync_service(engine, settings).run(), return_exceptions=True
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert sum(isinstance(r, SyncRun) for r in results) == 1


async def test_cards_follow_stripe_added_default_and_detached(
    consumer: dict[str, Any], stripe_http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    customer = consumer["stripe_customer_id"]
    card = await _default_card_at_stripe(stripe_http, customer)

    run = await sync_service(engine, settings).run()
    assert any(card["id"] in d for d in run.report["customers"]["differences"])
    async with engine.connect() as connection:
        mirrored = (await connection.execute(select(PaymentMethod))).all()
    assert [(m.stripe_payment_method_id, m.is_default, m.last4) for m in mirrored] == [
        (card["id"], True, "4242")
    ]

    await stripe_http.post(f"/v1/payment_methods/{card['id']}/detach")
    await sync_service(engine, settings).run()
    async with engine.connect() as connection:
        assert (await connection.execute(select(PaymentMethod))).all() == []


async def test_invoices_are_mirrored_and_paid_ones_book_earnings_once(
    behind: tuple[str, uuid.UUID], engine: AsyncEngine, settings: Settings
) -> None:
    _, our_id = behind
    first = await sync_service(engine, settings).run()
    assert first.report["invoices"]["changed"] >= 1
    async with engine.connect() as connection:
        invoice = (await connection.execute(select(Invoice).where(Invoice.subscription_id == our_id))).one()
        earnings = (await connection.execute(select(Earning).where(Earning.invoice_id == invoice.id))).all()
    assert invoice.status == "paid"
    assert invoice.amount_paid == 2900
    assert [(e.gross_amount, e.commission_amount, e.net_amount) for e in earnings] == [(2900, 580, 2320)]

    again = await sync_service(engine, settings).run()
    assert again.report["invoices"]["changed"] == 0
    async with engine.connect() as connection:
        assert len((await connection.execute(select(Earning))).all()) == 1
