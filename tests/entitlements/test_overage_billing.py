"""Overage past the included calls is billed once, on the invoice that closes the period: by the
meter item for subscriptions that have it, by one invoice line on the draft for those made before
overage was billed through the meter (no item), never both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import respx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PricingPlanVersion, Subscription, UsageRecord
from app.webhooks.jobs import process_stripe_event
from tests.support import rows
from tests.support.billing_data import World, event, invoice_obj, make_world
from tests.support.worker import Ctx, send

PERIOD_START = datetime(2026, 10, 5, tzinfo=UTC)
PERIOD_END = datetime(2026, 11, 5, tzinfo=UTC)
PERIOD = (int(PERIOD_START.timestamp()), int(PERIOD_END.timestamp()))


async def overage_world(engine: AsyncEngine, *, recorded: int) -> World:
    world = await make_world(engine, status="active", call_limit=100, started_at=datetime.now(UTC))
    async with engine.begin() as connection:
        await connection.execute(
            update(PricingPlanVersion)
            .where(PricingPlanVersion.plan_id == world.plan_id)
            .values(overage_price_per_call=Decimal("0.015"))
        )
    day = PERIOD_START + timedelta(days=2)
    await rows.add(
        engine,
        UsageRecord(
            subscription_id=world.subscription_id,
            window_start=day,
            window_end=day + timedelta(days=1),
            quantity=recorded,
            successful_calls=recorded,
            failed_calls=0,
        ),
    )
    return world


async def draft_created(client: httpx.AsyncClient, ctx: Ctx, world: World, invoice_id: str) -> None:
    draft = invoice_obj(world, invoice_id, "draft", amount=2900, period=PERIOD)
    payload = event("invoice.created", draft, created=10)
    response = await send(client, payload)
    assert response.status_code == 200
    assert await process_stripe_event(ctx, payload["id"]) == "processed"


def stripe_invoice_items(mock: respx.MockRouter, base: str | None) -> respx.Route:
    """Stripe's invoice items: the create route (returned), and the list of those it made."""
    made: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        form = httpx.QueryParams(request.content.decode())
        made.insert(
            0,
            {
                "id": f"ii_{uuid.uuid4().hex[:14]}",
                "object": "invoiceitem",
                "invoice": form.get("invoice"),
                "currency": form["currency"],
                "quantity": int(form["quantity"]),
                "unit_amount_decimal": form["unit_amount_decimal"],
                "description": form["description"],
                "metadata": {k[9:-1]: v for k, v in form.multi_items() if k.startswith("metadata[")},
            },
        )
        return httpx.Response(200, json=made[0])

    listing = {"object": "list", "url": "/v1/invoiceitems", "has_more": False}
    mock.get(f"{base}/v1/invoiceitems").mock(
        side_effect=lambda _: httpx.Response(200, json={**listing, "data": made})
    )
    route = mock.post(f"{base}/v1/invoiceitems")
    route.side_effect = answer
    return route


@contextmanager
def stripe_for_drafts(settings: Settings) -> Iterator[respx.Route]:
    """Stripe's invoice items (the create route) while the metering service has nothing to add."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get(url__startswith="http://metering.test/").respond(404)
        yield stripe_invoice_items(mock, settings.stripe_api_base)


async def test_a_subscription_without_the_meter_item_is_billed_its_overage_once_on_the_draft(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await overage_world(engine, recorded=160)
    invoice_id = f"in_{uuid.uuid4().hex[:10]}"
    with stripe_for_drafts(settings) as items:
        await draft_created(client, worker_ctx, world, invoice_id)
        # Stripe sends the event again (and a second one for the same draft): nothing more is billed.
        await draft_created(client, worker_ctx, world, invoice_id)
    assert items.call_count == 1
    form = httpx.QueryParams(items.calls[0].request.content.decode())
    assert (form["invoice"], form["quantity"], form["unit_amount_decimal"]) == (invoice_id, "60", "1.5")
    assert items.calls[0].request.headers["Idempotency-Key"] == (
        f"overage:{world.subscription_id}:{PERIOD[0]}"
    )


async def test_a_period_within_its_included_calls_bills_no_overage(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await overage_world(engine, recorded=100)
    with stripe_for_drafts(settings) as items:
        await draft_created(client, worker_ctx, world, f"in_{uuid.uuid4().hex[:10]}")
    assert items.call_count == 0


async def test_a_subscription_with_the_meter_item_never_also_gets_the_invoice_line_overage(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await overage_world(engine, recorded=160)
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == world.subscription_id)
            .values(stripe_overage_item_id="si_overage")
        )
    with stripe_for_drafts(settings) as items:
        await draft_created(client, worker_ctx, world, f"in_{uuid.uuid4().hex[:10]}")
        await draft_created(client, worker_ctx, world, f"in_{uuid.uuid4().hex[:10]}")
    assert items.call_count == 0  # the meter item's tiers bill the 60 calls past the 100 included
    async with engine.connect() as connection:
        kept = await connection.scalar(
            select(Subscription.stripe_overage_item_id).where(Subscription.id == world.subscription_id)
        )
    assert kept == "si_overage"


async def test_the_close_line_waits_for_a_plan_change_holding_the_subscription_before_counting_its_items(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await overage_world(engine, recorded=160)
    with stripe_for_drafts(settings) as items:
        async with engine.connect() as change:
            # A plan change holds the row as it does (FOR NO KEY UPDATE) while it bills its item.
            held = select(Subscription.id).where(Subscription.id == world.subscription_id)
            await change.execute(held.with_for_update(key_share=True))
            drafted = asyncio.create_task(
                draft_created(client, worker_ctx, world, f"in_{uuid.uuid4().hex[:10]}")
            )
            await asyncio.sleep(1)
            assert not drafted.done()
            assert items.call_count == 0  # it has not listed or billed while the change runs
            await change.commit()
        await drafted
    assert items.call_count == 1
