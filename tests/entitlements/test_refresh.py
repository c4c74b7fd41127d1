"""The cached entitlement follows the ledger: every change refreshes it after its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dunning.jobs import suspend_overdue_api_keys
from app.entitlements import keys
from app.models import MarketplaceEvent
from app.webhooks.jobs import process_stripe_event
from tests.support.asgi import running
from tests.support.auth import Auth
from tests.support.billing_data import event, invoice_obj, make_world
from tests.support.dunning import overdue_by
from tests.support.entitlement_data import GATEWAY, gateway_settings
from tests.support.journeys import create_plan, new_api_id, register, subscribe
from tests.support.stripe_payments import PERIOD
from tests.support.worker import Ctx, send


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def check(http: httpx.AsyncClient, subscription_id: str, api_id: str) -> dict[str, Any]:
    response = await http.post(
        "/api/v1/entitlements/check",
        json={"subscription_id": subscription_id, "api_id": api_id},
        headers=GATEWAY,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def free_subscription(
    http: httpx.AsyncClient, auth: Auth, **terms: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    consumer = auth()
    await register(http, consumer)
    plan = await create_plan(http, auth("creator"), new_api_id(), type="free", **terms)
    response = await subscribe(http, consumer, plan)
    assert response.status_code == 201, response.text
    return dict(response.json()), consumer


async def test_a_new_subscription_is_cached_by_its_commit(
    http: httpx.AsyncClient, auth: Auth, redis: Redis
) -> None:
    created, _ = await free_subscription(http, auth, call_limit=2)
    assert await redis.get(keys.snapshot_key(created["id"])) is not None
    body = await check(http, created["id"], created["api_id"])
    assert (body["allowed"], body["limit"]) == (True, 2)


async def test_a_cancellation_is_seen_by_the_next_check(http: httpx.AsyncClient, auth: Auth) -> None:
    created, consumer = await free_subscription(http, auth)
    assert (await check(http, created["id"], created["api_id"]))["allowed"] is True
    response = await http.put(f"/api/v1/subscriptions/{created['id']}/cancel", json={}, headers=consumer)
    assert response.status_code == 200, response.text
    body = await check(http, created["id"], created["api_id"])
    assert (body["allowed"], body["reason"]) == (False, "not_active")


async def test_a_plan_change_is_seen_by_the_next_check(http: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    consumer = auth()
    await register(http, consumer)
    api_id = new_api_id()
    small = await create_plan(http, creator, api_id, type="free", name="Small", call_limit=2)
    large = await create_plan(http, creator, api_id, type="free", name="Large", call_limit=50)
    created = (await subscribe(http, consumer, small)).json()
    assert (await check(http, created["id"], api_id))["limit"] == 2
    response = await http.put(
        f"/api/v1/subscriptions/{created['id']}/upgrade",
        json={"new_pricing_plan_id": large["id"]},
        headers=consumer,
    )
    assert response.status_code == 200, response.text
    assert (await check(http, created["id"], api_id))["limit"] == 50


async def test_a_dunning_suspension_and_its_restoration_are_seen_by_the_next_check(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    subscription_id, api_id = str(world.subscription_id), world.api_id

    async def deliver(payload: dict[str, Any]) -> None:
        response = await send(http, payload)
        assert response.status_code == 200
        assert await process_stripe_event(worker_ctx, payload["id"]) == "processed"

    assert (await check(http, subscription_id, api_id))["allowed"] is True
    await deliver(
        event("invoice.payment_failed", invoice_obj(world, "in_1", "open", period=PERIOD), created=100)
    )
    # Past due, within the grace period: calls still go through.
    assert (await check(http, subscription_id, api_id))["allowed"] is True
    await overdue_by(engine, settings.dunning_grace_days + 1)
    assert await suspend_overdue_api_keys(worker_ctx) == 1
    suspended = await check(http, subscription_id, api_id)
    assert (suspended["allowed"], suspended["reason"]) == (False, "suspended")
    paid = invoice_obj(world, "in_1", "paid", period=PERIOD, paid_at=200)
    await deliver(event("invoice.paid", paid, created=200))
    restored = await check(http, subscription_id, api_id)
    assert (restored["allowed"], restored["reason"]) == (True, "ok")
    async with engine.connect() as connection:
        statement = select(MarketplaceEvent.type).order_by(MarketplaceEvent.seq)
        announced = (await connection.execute(statement)).scalars().all()
    assert announced == [
        "subscription.changed",
        "invoice.payment_failed",
        "api_key.suspended",
        "api_key.restored",
        "subscription.changed",
        "invoice.paid",
    ]


async def test_with_per_process_copies_a_cancellation_is_seen_within_a_second(
    settings: Settings, http: httpx.AsyncClient, auth: Auth
) -> None:
    created, consumer = await free_subscription(http, auth)
    copies = gateway_settings(settings, entitlements_local_snapshot_seconds=0.5)
    async with running(copies) as (_app, gateway):
        assert (await check(gateway, created["id"], created["api_id"]))["allowed"] is True
        response = await http.put(f"/api/v1/subscriptions/{created['id']}/cancel", json={}, headers=consumer)
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.6)
        body = await check(gateway, created["id"], created["api_id"])
    assert (body["allowed"], body["reason"]) == (False, "not_active")
