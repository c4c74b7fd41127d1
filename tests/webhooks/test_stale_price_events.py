"""An event's price never moves a plan back: before following a price change from an event, the
webhook goes by the subscription Stripe holds now, whatever the order events arrive in and
whichever clock stamped the row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.models import Subscription
from tests.support.auth import Auth
from tests.support.billing_data import event
from tests.support.stripe_side import billing_price, on_basic_of_two, price_of_plan, stripe_object
from tests.support.worker import Ctx, deliver, one


@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-first", "stale-last"])
async def test_a_stale_subscription_event_never_moves_the_plan_back_when_our_clock_is_behind_stripes(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    worker_ctx: Ctx,
    settings: Settings,
    stale_first: bool,
) -> None:
    headers, created, basic, pro = await on_basic_of_two(client, auth)
    # Our clock runs ten minutes behind Stripe's when the consumer upgrades through our API.
    with clock.use(clock.ManualClock(datetime.now(UTC) - timedelta(minutes=10))):
        upgraded = await client.put(
            f"/api/v1/subscriptions/{created['id']}/upgrade",
            json={"new_pricing_plan_id": pro["id"]},
            headers=headers,
        )
    assert upgraded.status_code == 200, upgraded.text
    row = await one(engine, Subscription, id=uuid.UUID(created["id"]))
    assert row.pricing_plan_id == uuid.UUID(pro["id"])
    stamp = int(row.stripe_state_at)

    # Stripe sent two updates: one from before the upgrade (still on Basic), then the upgrade's.
    # By Stripe's clock both are later than our stamp of the upgrade.
    now_at_stripe = await stripe_object(settings, f"/v1/subscriptions/{created['stripe_subscription_id']}")
    stale = event(
        "customer.subscription.updated",
        billing_price(now_at_stripe, await price_of_plan(engine, basic["id"])),
        created=stamp + 60,
    )
    upgrade = event("customer.subscription.updated", now_at_stripe, created=stamp + 61)
    for delivered in [stale, upgrade] if stale_first else [upgrade, stale]:
        assert await deliver(client, worker_ctx, delivered) == "processed"
        plan = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
        assert plan["pricing_plan_id"] == pro["id"], delivered["created"]
