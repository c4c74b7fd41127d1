"""Dunning: failed payment -> past_due -> key suspended after the grace period -> restored or ended."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import respx
from arq import Retry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dunning.jobs import suspend_overdue_api_keys
from app.models import OutboxMessage, Subscription
from app.webhooks.jobs import process_stripe_event
from tests.support.billing_data import World, event, invoice_obj, make_world, subscription_obj
from tests.support.dunning import overdue_by
from tests.support.stripe_payments import PERIOD
from tests.support.worker import Ctx, deliver, send


async def subscription(engine: AsyncEngine, world: World) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(Subscription).filter_by(id=world.subscription_id))).one()


async def outbox_kinds(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return sorted((await connection.execute(select(OutboxMessage.kind))).scalars().all())


async def fail_payment(client: httpx.AsyncClient, ctx: Ctx, world: World, created: int = 100) -> None:
    failed = invoice_obj(world, "in_dun", "open", period=PERIOD)
    assert await deliver(client, ctx, event("invoice.payment_failed", failed, created=created)) == "processed"


async def test_failed_payment_makes_the_subscription_past_due(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    await fail_payment(client, worker_ctx, world)
    sub = await subscription(engine, world)
    assert sub.status == "past_due"
    assert sub.past_due_since is not None


async def test_key_is_suspended_only_after_the_grace_period(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    await fail_payment(client, worker_ctx, world)
    await overdue_by(engine, settings.dunning_grace_days - 1)
    assert await suspend_overdue_api_keys(worker_ctx) == 0
    await overdue_by(engine, settings.dunning_grace_days + 1)
    assert await suspend_overdue_api_keys(worker_ctx) == 1
    assert await suspend_overdue_api_keys(worker_ctx) == 0
    assert await outbox_kinds(engine) == ["suspend_api_key"]


async def test_two_workers_suspending_at_once_suspend_the_key_once(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    await fail_payment(client, worker_ctx, world)
    await overdue_by(engine, settings.dunning_grace_days + 1)
    results = await asyncio.gather(suspend_overdue_api_keys(worker_ctx), suspend_overdue_api_keys(worker_ctx))
    assert sorted(results) == [0, 1]
    assert await outbox_kinds(engine) == ["suspend_api_key"]


async def test_paid_invoice_restores_active_and_the_suspended_key(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    await fail_payment(client, worker_ctx, world)
    await overdue_by(engine, settings.dunning_grace_days + 1)
    await suspend_overdue_api_keys(worker_ctx)
    paid = invoice_obj(world, "in_dun", "paid", period=PERIOD, paid_at=200)
    assert await deliver(client, worker_ctx, event("invoice.paid", paid, created=200)) == "processed"
    sub = await subscription(engine, world)
    assert (sub.status, sub.past_due_since) == ("active", None)
    assert await outbox_kinds(engine) == ["restore_api_key", "suspend_api_key"]


async def test_late_payment_failure_of_a_paid_invoice_does_not_enter_dunning(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    paid = invoice_obj(world, "in_dun", "paid", period=PERIOD, paid_at=200)
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=200))
    await fail_payment(client, worker_ctx, world, created=100)
    assert (await subscription(engine, world)).status == "active"


async def test_a_second_dunning_spell_suspends_and_restores_again(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    for spell, start in enumerate((100, 300)):
        failed = invoice_obj(world, f"in_dun{spell}", "open", period=PERIOD)
        await deliver(client, worker_ctx, event("invoice.payment_failed", failed, created=start))
        await overdue_by(engine, settings.dunning_grace_days + 1 + spell)
        assert await suspend_overdue_api_keys(worker_ctx) == 1
        paid = invoice_obj(world, f"in_dun{spell}", "paid", period=PERIOD, paid_at=start + 50)
        await deliver(client, worker_ctx, event("invoice.paid", paid, created=start + 50))
    assert await outbox_kinds(engine) == ["restore_api_key"] * 2 + ["suspend_api_key"] * 2


async def test_retries_ended_unpaid_cancels_at_stripe_and_revokes_the_key(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active", stripe_subscription="sub_unpaid1")
    await fail_payment(client, worker_ctx, world)
    unpaid = subscription_obj(world, "unpaid", period=PERIOD)
    with respx.mock(assert_all_called=True) as stripe_mock:
        cancel = stripe_mock.delete(f"{settings.stripe_api_base}/v1/subscriptions/sub_unpaid1").respond(
            200, json={**unpaid, "status": "canceled", "canceled_at": int(time.time())}
        )
        assert (
            await deliver(client, worker_ctx, event("customer.subscription.updated", unpaid, created=500))
            == "processed"
        )
    assert cancel.call_count == 1
    assert cancel.calls[0].request.headers["Idempotency-Key"] == f"sub-cancel-unpaid:{world.subscription_id}"
    sub = await subscription(engine, world)
    assert sub.status == "cancelled"
    assert "revoke_api_key" in await outbox_kinds(engine)


async def test_stripe_down_while_ending_dunning_retries_the_event(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="past_due", stripe_subscription="sub_unpaid2")
    unpaid = subscription_obj(world, "unpaid", period=PERIOD)
    payload = event("customer.subscription.updated", unpaid, created=500)
    await send(client, payload)
    with respx.mock() as stripe_mock:
        stripe_mock.delete(f"{settings.stripe_api_base}/v1/subscriptions/sub_unpaid2").respond(500)
        with pytest.raises(Retry):
            await process_stripe_event(worker_ctx, payload["id"])
    assert (await subscription(engine, world)).status == "past_due"
    with respx.mock() as stripe_mock:
        stripe_mock.delete(f"{settings.stripe_api_base}/v1/subscriptions/sub_unpaid2").respond(
            404, json={"error": {"type": "invalid_request_error", "message": "No such subscription"}}
        )
        assert await process_stripe_event({**worker_ctx, "job_try": 2}, payload["id"]) == "processed"
    assert (await subscription(engine, world)).status == "cancelled"


async def test_payment_before_any_suspension_asks_for_no_restore(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    await fail_payment(client, worker_ctx, world)
    paid = invoice_obj(world, "in_dun", "paid", period=PERIOD, paid_at=200)
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=200))
    assert (await subscription(engine, world)).status == "active"
    assert await outbox_kinds(engine) == []
