"""What we fetch from Stripe is stamped with the time of Stripe's answer, by Stripe's clock, never
by ours: an older Stripe state never overwrites a newer one, whichever way our clock is off."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.models import Invoice, Subscription
from tests.support.auth import Auth
from tests.support.billing_data import event, invoice_obj, make_world, subscription_obj
from tests.support.journeys import create_plan, new_api_id, subscribed_consumer
from tests.support.stripe_payments import T0, Payments, refund, stripe_date
from tests.support.sync import sync_service
from tests.support.worker import Ctx, deliver, one, rows

ANSWERED = T0  # when Stripe answers, by its clock
PERIOD = (ANSWERED - 86400, ANSWERED + 29 * 86400)
skews = pytest.mark.parametrize(
    "skew", [timedelta(minutes=10), -timedelta(minutes=10)], ids=["ours-ahead", "ours-behind"]
)


def _ours(skew: timedelta, at: int = ANSWERED) -> clock.ManualClock:
    return clock.ManualClock(datetime.fromtimestamp(at, UTC) + skew)


@skews
async def test_a_checkout_completion_mirrors_the_fetched_subscription_as_of_stripes_answer(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings, skew: timedelta
) -> None:
    world = await make_world(engine, checkout_session=f"cs_{uuid.uuid4().hex[:10]}")
    session = {
        "id": f"cs_{world.api_id[4:]}",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "customer": world.customer,
        "subscription": world.stripe_subscription,
        "metadata": {"subscription_id": str(world.subscription_id)},
    }
    fetched = subscription_obj(world, "active", period=PERIOD)
    url = f"{settings.stripe_api_base}/v1/subscriptions/{world.stripe_subscription}"
    with clock.use(_ours(skew)), respx.mock(assert_all_called=True) as stripe_mock:
        stripe_mock.get(url).respond(200, json=fetched, headers=stripe_date(ANSWERED))
        completed = event("checkout.session.completed", session, created=ANSWERED - 30)
        assert await deliver(client, worker_ctx, completed) == "processed"
        # Stripe's updates from just before its answer and just after it.
        older = subscription_obj(world, "past_due", period=PERIOD)
        await deliver(client, worker_ctx, event("customer.subscription.updated", older, created=ANSWERED - 5))
        row = await one(engine, Subscription, id=world.subscription_id)
        assert (row.status, row.stripe_state_at) == ("active", ANSWERED)
        newer = subscription_obj(world, "active", period=PERIOD, cancel_at_period_end=True)
        await deliver(client, worker_ctx, event("customer.subscription.updated", newer, created=ANSWERED + 5))

    row = await one(engine, Subscription, id=world.subscription_id)
    assert (row.status, row.cancel_at_period_end, row.stripe_state_at) == ("active", True, ANSWERED + 5)


@skews
async def test_a_payment_intent_mirrors_the_refetched_invoice_as_of_stripes_answer(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings, skew: timedelta
) -> None:
    world = await make_world(engine, status="active")
    paid = invoice_obj(world, "in_pi_stamp", "paid", period=PERIOD, paid_at=ANSWERED - 60)
    intent = {"id": "pi_stamp", "object": "payment_intent", "status": "succeeded", "invoice": "in_pi_stamp"}
    with clock.use(_ours(skew)), respx.mock(assert_all_called=True) as stripe_mock:
        stripe_mock.get(f"{settings.stripe_api_base}/v1/invoices/in_pi_stamp").respond(
            200, json=paid, headers=stripe_date(ANSWERED)
        )
        succeeded = event("payment_intent.succeeded", intent, created=ANSWERED - 50)
        assert await deliver(client, worker_ctx, succeeded) == "processed"

    invoice = await one(engine, Invoice, stripe_invoice_id="in_pi_stamp")
    assert (invoice.status, invoice.stripe_state_at) == ("paid", ANSWERED)


@skews
async def test_a_refund_before_the_invoice_mirrors_the_refetched_invoice_as_of_stripes_answer(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    stripe_payments: Payments,
    skew: timedelta,
) -> None:
    world = await make_world(engine, status="active")
    fake, _ = stripe_payments
    answered = T0 + 100  # after the invoice was paid (T0 + 5)
    fake.world, fake.answered_at = world, answered
    fake.paid("in_refund_stamp")
    obj = refund("in_refund_stamp", "re_s", 1000, "succeeded")
    with clock.use(_ours(skew, answered)):
        assert (
            await deliver(client, worker_ctx, event("refund.created", obj, created=answered - 40))
            == "processed"
        )

    invoice = await one(engine, Invoice, stripe_invoice_id="in_refund_stamp")
    assert invoice.stripe_state_at == answered


@skews
async def test_a_change_through_the_api_is_mirrored_as_of_stripes_answer(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, skew: timedelta
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, created = await subscribed_consumer(client, auth, plan)
    with clock.use(_ours(skew, int(time.time()))):
        asked = int(time.time())
        cancelled = await client.put(
            f"/api/v1/subscriptions/{created['id']}/cancel", json={"immediately": False}, headers=headers
        )
        answered = int(time.time())
    assert cancelled.json()["cancel_at_period_end"] is True, cancelled.text

    # The emulator's clock is the real one: Stripe answered between our asking and our reading.
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    assert asked <= row.stripe_state_at <= answered + 1


@skews
async def test_billing_sync_mirrors_what_it_lists_as_of_stripes_answer(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, settings: Settings, skew: timedelta
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    _headers, created = await subscribed_consumer(client, auth, plan)  # its invoice not mirrored yet
    with clock.use(_ours(skew, int(time.time()))):
        asked = int(time.time())
        await sync_service(engine, settings).run()
        answered = int(time.time())

    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    [invoice] = [i for i in await rows(engine, Invoice) if i.subscription_id == row.id]
    assert asked <= row.stripe_state_at <= answered + 1
    assert asked <= invoice.stripe_state_at <= answered + 1
