"""Our subscription row follows what Stripe holds: its cancellation, its trial end and its price,
through the webhook endpoint and `billing sync`."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock, metrics
from app.config import Settings
from app.models import OutboxMessage, Subscription
from tests.support.auth import Auth
from tests.support.billing_data import event, make_world, subscription_obj
from tests.support.journeys import (
    create_plan,
    new_api_id,
    stripe_customer_with_card,
    subscribe,
)
from tests.support.stripe_side import billing_price, change_price_at_stripe, on_basic_of_two, price_of_plan
from tests.support.sync import sync_service
from tests.support.worker import Ctx, deliver, one, rows

DAY = 86400


async def test_a_stripe_cancellation_dated_before_our_own_stamp_still_cancels_and_revokes_the_key(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, worker_ctx: Ctx
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, customer = await stripe_customer_with_card(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    assert created["status"] == "active"
    # Our clock runs 30 s ahead of Stripe's while cancelling at the period's end.
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    with clock.use(clock.ManualClock(ahead)):
        marked = await client.put(f"/api/v1/subscriptions/{created['id']}/cancel", headers=headers)
    assert marked.json()["cancel_at_period_end"] is True
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    stripe_now = int(row.stripe_state_at) - 1  # Stripe's cancellation, dated before our stamp
    deleted = {
        "id": created["stripe_subscription_id"],
        "object": "subscription",
        "customer": customer,
        "status": "canceled",
        "cancel_at_period_end": False,
        "canceled_at": stripe_now,
        "ended_at": stripe_now,
        "trial_end": None,
        "metadata": {"subscription_id": created["id"]},
        "items": {"object": "list", "data": [{"id": row.stripe_subscription_item_id}]},
    }
    outcome = await deliver(
        client, worker_ctx, event("customer.subscription.deleted", deleted, created=stripe_now)
    )
    assert outcome == "processed"
    fetched = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert fetched["status"] == "cancelled"
    assert fetched["cancelled_at"] == datetime.fromtimestamp(stripe_now, tz=UTC).isoformat().replace(
        "+00:00", "Z"
    )
    kinds = [m.kind for m in await rows(engine, OutboxMessage, subscription_id=uuid.UUID(created["id"]))]
    assert sorted(kinds) == ["create_api_key", "revoke_api_key"]


async def test_a_terminal_snapshot_of_another_stripe_subscription_never_cancels_the_row(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx
) -> None:
    world = await make_world(engine, status="active")
    other = {**subscription_obj(world, "canceled", period=(1, 2), canceled_at=2), "id": "sub_someone_else"}
    await deliver(client, worker_ctx, event("customer.subscription.deleted", other, created=3))
    assert (await one(engine, Subscription, id=world.subscription_id)).status == "active"


async def test_a_snapshot_without_trial_end_never_erases_the_known_trial_end(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx
) -> None:
    world = await make_world(engine, status="incomplete")
    t0 = int(time.time())
    trial_end = t0 + 14 * DAY
    trialing = subscription_obj(world, "trialing", period=(t0, trial_end), trial_end=trial_end)
    await deliver(client, worker_ctx, event("customer.subscription.updated", trialing, created=t0))
    # The first `created` event, two seconds later, carries the subscription before its trial.
    first = subscription_obj(world, "trialing", period=(t0, trial_end))
    await deliver(client, worker_ctx, event("customer.subscription.created", first, created=t0 + 2))
    row = await one(engine, Subscription, id=world.subscription_id)
    assert (row.status, row.trial_end) == ("trial", datetime.fromtimestamp(trial_end, tz=UTC))


async def test_a_price_changed_at_stripe_moves_the_row_to_that_plan_version(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, worker_ctx: Ctx, settings: Settings
) -> None:
    _headers, created, basic, pro = await on_basic_of_two(client, auth)
    snapshot = await change_price_at_stripe(settings, engine, created["id"], pro["id"])
    stamp = (await one(engine, Subscription, id=uuid.UUID(created["id"]))).stripe_state_at
    changed = event("customer.subscription.updated", snapshot, created=stamp + 10)
    await deliver(client, worker_ctx, changed)
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    assert (row.pricing_plan_id, row.plan_version, row.unmatched_stripe_price_id) == (
        uuid.UUID(pro["id"]), 1, None
    )  # fmt: skip
    # A late, older snapshot with the old price never moves it back.
    older = billing_price(snapshot, await price_of_plan(engine, basic["id"]))
    await deliver(client, worker_ctx, event("customer.subscription.updated", older, created=stamp + 5))
    assert (await one(engine, Subscription, id=row.id)).pricing_plan_id == uuid.UUID(pro["id"])


async def test_a_price_no_plan_of_the_api_has_is_flagged_and_counted_and_the_plan_kept(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, worker_ctx: Ctx, settings: Settings
) -> None:
    _headers, created, basic, _pro = await on_basic_of_two(client, auth)
    # A price of another API's plan is no plan of this API either.
    stranger = await create_plan(client, auth("creator"), new_api_id(), name="Elsewhere")
    snapshot = await change_price_at_stripe(settings, engine, created["id"], stranger["id"])
    stamp = (await one(engine, Subscription, id=uuid.UUID(created["id"]))).stripe_state_at
    before = metrics.SUBSCRIPTION_PRICE_UNMATCHED._value.get()
    for at in (stamp + 10, stamp + 11):
        await deliver(client, worker_ctx, event("customer.subscription.updated", snapshot, created=at))
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    assert (row.pricing_plan_id, row.plan_version) == (uuid.UUID(basic["id"]), 1)
    assert row.unmatched_stripe_price_id == await price_of_plan(engine, stranger["id"])
    assert metrics.SUBSCRIPTION_PRICE_UNMATCHED._value.get() == before + 1
    # Once Stripe bills the plan's own price again, the flag clears.
    back = await change_price_at_stripe(settings, engine, created["id"], basic["id"])
    await deliver(client, worker_ctx, event("customer.subscription.updated", back, created=stamp + 12))
    assert (await one(engine, Subscription, id=row.id)).unmatched_stripe_price_id is None


async def test_sync_moves_the_plan_to_the_price_stripe_bills_or_flags_it(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_http: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    headers, created, _basic, pro = await on_basic_of_two(client, auth)
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    # The consumer changes plan in the Stripe dashboard; no webhook reaches us.
    await change_price_at_stripe(settings, engine, created["id"], pro["id"])
    # Sync's snapshots are as of Stripe's answer, dated to the second: a second after our stamp.
    await asyncio.sleep(1.1)
    run = await sync_service(engine, settings).run()
    fetched = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert (fetched["pricing_plan_id"], fetched["pricing_plan"]["name"]) == (pro["id"], "Pro")
    assert any(
        row.stripe_subscription_id in d and "plan" in d for d in run.report["subscriptions"]["differences"]
    )
    # A price that no plan of the API has is flagged in the report, and the plan kept.
    product = (await stripe_http.post("/v1/products", data={"name": "Made in the dashboard"})).json()
    stray = await stripe_http.post(
        "/v1/prices",
        data={
            "currency": "usd",
            "unit_amount": "777",
            "recurring[interval]": "month",
            "product": product["id"],
        },
    )
    assert stray.status_code == 200, stray.text
    await stripe_http.post(
        f"/v1/subscriptions/{row.stripe_subscription_id}",
        data={"items[0][id]": row.stripe_subscription_item_id, "items[0][price]": stray.json()["id"]},
    )
    await asyncio.sleep(1.1)
    run = await sync_service(engine, settings).run()
    report = run.report["subscriptions"]
    assert report["flagged"] == 1
    assert any(stray.json()["id"] in d for d in report["differences"])
    flagged = await one(engine, Subscription, id=row.id)
    assert (flagged.pricing_plan_id, flagged.unmatched_stripe_price_id) == (
        uuid.UUID(pro["id"]),
        stray.json()["id"],
    )
