"""Marketplace events: signed webhooks with retries, order per subscription, a delivery log, replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner

from app import cli as cli_module
from app import clock
from app.config import Settings
from app.events.jobs import deliver_marketplace_events
from app.events.publisher import publish
from app.events.replay import replay_events
from app.events.schemas import EVENT_SCHEMAS, render_docs
from app.events.signature import SIGNATURE_HEADER, verify
from app.events.types import EVENT_TYPES
from app.models import MarketplaceEvent, MarketplaceEventDelivery, Subscription
from app.outbox.service import Outbox
from app.resources import Resources
from tests.support.asgi import running
from tests.support.auth import Auth
from tests.support.entitlement_data import (
    GATEWAY,
    PERIOD_END,
    check_body,
    entitled,
    gateway_settings,
)
from tests.support.journeys import create_plan, new_api_id, register, subscribe

Ctx = dict[str, Any]
ENDPOINT = "https://marketplace.test/billing-events"
SECOND_ENDPOINT = "https://notifications.test/hooks"
NEW_SECRET, OLD_SECRET = "whsec_market_new", "whsec_market_old"
NOW = datetime(2026, 3, 13, 9, 0, tzinfo=UTC)


def events_settings(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "marketplace_webhook_urls": ENDPOINT,
        "marketplace_webhook_secrets": SecretStr(f"{NEW_SECRET},{OLD_SECRET}"),
        "marketplace_webhook_max_attempts": 3,
    }
    values.update(overrides)
    return gateway_settings(settings, **values)


@pytest.fixture
def business_time() -> Iterator[clock.ManualClock]:
    manual = clock.ManualClock(NOW)
    with clock.use(manual):
        yield manual


@pytest.fixture
async def worker(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Ctx]:
    resources = Resources.open(events_settings(settings), jobs=True)
    yield {"resources": resources, "job_try": 1}
    await resources.close()


async def add_event(
    engine: AsyncEngine, subscription_id: uuid.UUID | None, type: str = "quota.exhausted"
) -> uuid.UUID:
    async with AsyncSession(engine) as session, session.begin():
        dedupe = f"test:{uuid.uuid4()}"
        await publish(
            session, None, type=type, dedupe_key=dedupe, subscription_id=subscription_id, payload={"n": 1}
        )
        return (
            await session.scalars(select(MarketplaceEvent.id).where(MarketplaceEvent.dedupe_key == dedupe))
        ).one()


async def events_of(engine: AsyncEngine) -> list[MarketplaceEvent]:
    async with AsyncSession(engine) as session:
        return list((await session.scalars(select(MarketplaceEvent).order_by(MarketplaceEvent.seq))).all())


async def deliveries(engine: AsyncEngine) -> list[MarketplaceEventDelivery]:
    async with AsyncSession(engine) as session:
        statement = select(MarketplaceEventDelivery).order_by(MarketplaceEventDelivery.attempted_at)
        return list((await session.scalars(statement)).all())


def received(route: respx.Route) -> list[dict[str, Any]]:
    return [orjson.loads(call.request.content) for call in route.calls]


async def test_a_delivery_is_signed_with_every_secret_and_retried_after_a_failure(
    worker: Ctx, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    subscription = await entitled(engine)
    event_id = await add_event(engine, subscription.id)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT)
        route.side_effect = [httpx.Response(503), httpx.Response(200)]
        assert (await deliver_marketplace_events(worker))["retrying"] == 1
        # Not due yet: the backoff holds it back.
        assert (await deliver_marketplace_events(worker))["delivered"] == 0
        business_time.advance(timedelta(seconds=11))
        assert (await deliver_marketplace_events(worker))["delivered"] == 1
    request = route.calls[-1].request
    header = request.headers[SIGNATURE_HEADER]
    now = int(datetime.now(UTC).timestamp())
    assert verify(request.content, header, NEW_SECRET, now=now)
    assert verify(request.content, header, OLD_SECRET, now=now)
    assert not verify(request.content, header, "whsec_someone_else", now=now)
    assert not verify(request.content, header, NEW_SECRET, now=now + 3600)
    body = orjson.loads(request.content)
    assert (body["id"], body["type"], body["subscription_id"]) == (
        str(event_id),
        "quota.exhausted",
        str(subscription.id),
    )
    assert request.headers["Marketplace-Event-Id"] == str(event_id)
    [event] = await events_of(engine)
    assert (event.status, event.attempts) == ("delivered", 2)
    log = await deliveries(engine)
    assert [(d.endpoint, d.attempt, d.status_code) for d in log] == [(ENDPOINT, 1, 503), (ENDPOINT, 2, 200)]


async def test_an_event_fails_for_good_after_the_last_attempt(
    worker: Ctx, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    await add_event(engine, None)
    with respx.mock(assert_all_called=False) as mock:
        mock.post(ENDPOINT).respond(500)
        for _ in range(3):
            await deliver_marketplace_events(worker)
            business_time.advance(timedelta(hours=2))
    [event] = await events_of(engine)
    assert (event.status, event.attempts, event.last_error) == ("failed", 3, f"{ENDPOINT}: HTTP 500")


async def test_events_of_one_subscription_go_out_in_the_order_written(
    worker: Ctx, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    first_subscription = await entitled(engine)
    other_subscription = await entitled(engine)
    first = await add_event(engine, first_subscription.id, "subscription.created")
    other = await add_event(engine, other_subscription.id, "subscription.created")
    second = await add_event(engine, first_subscription.id, "subscription.cancelled")
    failing = {str(first)}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if orjson.loads(request.content)["id"] in failing else 200)

    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT)
        route.side_effect = answer
        await deliver_marketplace_events(worker)
        # The other subscription's event is not held back; this one's second event waits for its first.
        assert [b["id"] for b in received(route)] == [str(first), str(other)]
        failing.clear()
        business_time.advance(timedelta(seconds=11))
        await deliver_marketplace_events(worker)
    assert [b["id"] for b in received(route)] == [str(first), str(other), str(first), str(second)]


async def test_an_endpoint_that_took_the_event_is_not_sent_it_again_on_retry(
    settings: Settings, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    resources = Resources.open(
        events_settings(settings, marketplace_webhook_urls=f"{ENDPOINT},{SECOND_ENDPOINT}"),
        jobs=True,
    )
    ctx: Ctx = {"resources": resources}
    try:
        await add_event(engine, None)
        with respx.mock(assert_all_called=False) as mock:
            good = mock.post(ENDPOINT).respond(200)
            flaky = mock.post(SECOND_ENDPOINT)
            flaky.side_effect = [httpx.Response(502), httpx.Response(200)]
            await deliver_marketplace_events(ctx)
            business_time.advance(timedelta(seconds=11))
            await deliver_marketplace_events(ctx)
    finally:
        await resources.close()
    assert (good.call_count, flaky.call_count) == (1, 2)
    assert [e.status for e in await events_of(engine)] == ["delivered"]


async def test_replay_sends_a_delivered_event_to_every_endpoint_again(
    settings: Settings, worker: Ctx, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    event_id = await add_event(engine, None)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT).respond(200)
        await deliver_marketplace_events(worker)
        result = await replay_events(events_settings(settings), event_id=event_id, failed=False, since=None)
    assert (result.chosen, result.delivered) == (1, 1)
    assert route.call_count == 2
    assert [d.round for d in await deliveries(engine)] == [0, 1]


@pytest.fixture(scope="module")
async def gateway(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(events_settings(settings, entitlements_redis_timeout_seconds=10)) as pair:
        yield pair


async def test_a_new_subscription_is_announced_as_subscription_created(
    gateway: tuple[FastAPI, httpx.AsyncClient], worker: Ctx, engine: AsyncEngine, auth: Auth
) -> None:
    http = gateway[1]
    consumer = auth()
    await register(http, consumer)
    plan = await create_plan(http, auth("creator"), new_api_id(), type="free", call_limit=10)
    created = (await subscribe(http, consumer, plan)).json()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT).respond(200)
        await deliver_marketplace_events(worker)
    [body] = received(route)
    assert body["type"] == "subscription.created"
    EVENT_SCHEMAS[body["type"]][0].model_validate(body["data"])
    assert (body["data"]["subscription_id"], body["data"]["status"]) == (created["id"], "active")


async def test_usage_alerts_are_raised_once_per_period_at_80_and_100_percent(
    gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    http = gateway[1]
    subscription = await entitled(engine, call_limit=10)
    with clock.use(clock.ManualClock(PERIOD_END - timedelta(days=1))):
        for _ in range(12):
            await http.post(
                "/api/v1/entitlements/check", json=check_body(subscription, track=1), headers=GATEWAY
            )
    with clock.use(clock.ManualClock(PERIOD_END + timedelta(hours=1))):
        for _ in range(8):
            await http.post(
                "/api/v1/entitlements/check", json=check_body(subscription, track=1), headers=GATEWAY
            )
    events = await events_of(engine)
    for event in events:
        EVENT_SCHEMAS[event.type][0].model_validate(event.payload)
    alerts = [(e.type, e.payload.get("threshold_percent"), e.payload["period_start"]) for e in events]
    first, second = "2026-03-10T12:00:00+00:00", "2026-04-10T12:00:00+00:00"
    assert alerts == [
        ("usage.threshold_reached", 80, first),
        ("usage.threshold_reached", 100, first),
        ("quota.exhausted", None, first),
        ("usage.threshold_reached", 80, second),
    ]


async def test_the_notification_records_are_delivered_as_events(worker: Ctx, engine: AsyncEngine) -> None:
    subscription = await entitled(engine)
    async with AsyncSession(engine) as session, session.begin():
        row = await session.get(Subscription, subscription.id)
        assert row is not None
        trial_end = "2026-04-01T00:00:00+00:00"
        payload = {"consumer_id": str(row.consumer_id), "trial_end": trial_end}
        await Outbox(session, None).notify(row, "trial_will_end", f"{row.id}:{trial_end}", payload)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT).respond(200)
        await deliver_marketplace_events(worker)
    [body] = received(route)
    assert (body["type"], body["data"]["trial_end"]) == ("subscription.trial_ending", trial_end)
    EVENT_SCHEMAS[body["type"]][0].model_validate(body["data"])


def test_every_event_type_is_documented_with_its_schema() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    assert docs == render_docs(), "regenerate: python -m app.events.schemas > docs/events.md"
    assert set(EVENT_SCHEMAS) == set(EVENT_TYPES)


def test_events_replay_without_a_selection_explains_the_options() -> None:
    result = CliRunner().invoke(cli_module.cli, ["events", "replay"])
    assert result.exit_code == 2
    assert "--event ID, --failed or --since T" in result.output


def test_events_replay_names_a_malformed_event_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: events_settings(settings))
    result = CliRunner().invoke(cli_module.cli, ["events", "replay", "--event", "not-a-uuid"])
    assert result.exit_code == 2
    assert "must be an event id" in result.output


def test_events_replay_of_an_unknown_event_replays_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: events_settings(settings))
    result = CliRunner().invoke(cli_module.cli, ["events", "replay", "--event", str(uuid.uuid4())])
    assert result.exit_code == 0, result.output
    assert "replayed 0 events: 0 delivered" in result.output
