"""Usage money at the edges: refused meter events, the last day, cancellations, plan changes,
huge counts, and which period a window belongs to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from arq import Retry
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from typer.testing import CliRunner, Result

from app import cli as cli_module
from app import clock, metrics
from app.config import Settings
from app.models import Subscription, UsageRecord
from app.stripe import StripeGateway
from app.usage.jobs import aggregate_usage
from app.usage.service import UsageService
from app.usage.windows import day_start
from app.webhooks.jobs import process_stripe_event
from tests.support.auth import Auth
from tests.support.billing_data import event, invoice_obj, make_world, subscription_obj
from tests.support.journeys import create_plan, new_api_id, subscribed_consumer, upgrade
from tests.support.stripe_side import change_price_at_stripe
from tests.support.sync import sync_service
from tests.support.usage import METERING, meter_event_api, pay_per_use, usage_windows
from tests.support.worker import Ctx, deliver


@dataclass
class Counts:
    """The metering service: successful calls per (subscription, day) as counted so far."""

    calls: dict[tuple[str, date], int] = field(default_factory=dict)
    default: Callable[[date], int] = lambda day: 100 + day.day
    down: bool = False

    def set(self, subscription_id: Any, day: date, successful: int) -> None:
        self.calls[(str(subscription_id), day)] = successful

    def answer(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        subscription_id = request.url.path.rsplit("/", 1)[-1]
        first = date.fromisoformat(request.url.params["start"])
        last = date.fromisoformat(request.url.params["end"])
        successful = 0
        day = first
        while day <= last:
            successful += self.calls.get((subscription_id, day), self.default(day))
            day += timedelta(days=1)
        return httpx.Response(
            200,
            json={
                "subscription_id": subscription_id,
                "period_start": request.url.params["start"],
                "period_end": request.url.params["end"],
                "summary": {"total_calls": successful, "successful_calls": successful, "failed_calls": 0},
                "recent_calls": [],
            },
        )


@dataclass
class Services:
    counts: Counts
    meter_events: respx.Route
    accepted: dict[str, dict[str, Any]]
    refused: set[str]
    mock: respx.MockRouter

    def sent(self) -> list[httpx.QueryParams]:
        return [httpx.QueryParams(c.request.content.decode()) for c in self.meter_events.calls]


@pytest.fixture
def services(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """Metering and Stripe's meter events mocked; other Stripe calls reach the emulator."""
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    accepted: dict[str, dict[str, Any]] = {}
    refused: set[str] = set()
    counts = Counts()
    with respx.mock(assert_all_called=False) as mock:
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api(
            accepted, refuse=lambda form: form["identifier"] in refused
        )
        mock.get(url__startswith=f"{METERING}/api/v1/usage/subscription/").side_effect = counts.answer
        mock.route(host="127.0.0.1").pass_through()
        yield Services(counts, meter_events, accepted, refused, mock)


async def cli(*args: str) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        lambda: runner.invoke(cli_module.cli, ["usage", *args], env={"COLUMNS": "250"})
    )


def _next_morning(today: date) -> clock.ManualClock:
    """Business time five minutes into the day after `today`, when the cron has counted `today`."""
    return clock.ManualClock(day_start(today + timedelta(days=1)) + timedelta(minutes=5))


async def _sent_after_next_morning(
    services: Services, worker_ctx: Ctx, subscription_id: str, today: date, calls_today: int
) -> list[str]:
    """Metering counts `calls_today` for the subscription today; the next morning's aggregation
    runs: every meter event value sent to Stripe so far."""
    services.counts.set(subscription_id, today, calls_today)
    with clock.use(_next_morning(today)):
        await aggregate_usage(worker_ctx)
    return [p["payload[value]"] for p in services.sent()]


def quarantined_total() -> float:
    return (
        metrics.REGISTRY.get_sample_value("billing_usage_windows_quarantined_total", {"reason": "refused"})
        or 0.0
    )


# --- item 2: one refused meter event -------------------------------------------------------


async def test_a_refused_window_is_quarantined_alone_and_sent_again_only_on_an_operators_retry(
    worker_ctx: Ctx, engine: AsyncEngine, services: Services, client: httpx.AsyncClient
) -> None:
    world = await pay_per_use(engine, started_at=datetime.now(UTC) - timedelta(days=3))
    middle = datetime.now(UTC).date() - timedelta(days=2)
    services.refused.add(f"usage:{world.subscription_id}:{middle:%Y%m%d}")
    before = quarantined_total()

    first = await aggregate_usage(worker_ctx)
    assert first == {"recorded": 3, "reported": 2, "unavailable": 0, "stripe_failures": 0}
    stored = await usage_windows(engine)
    assert [w.report_status for w in stored] == ["accepted", "quarantined", "accepted"]
    assert "parameter_invalid_integer" in stored[1].report_error
    assert quarantined_total() == before + 1
    assert "billing_usage_windows_quarantined_total" in (await client.get("/metrics")).text

    # Neither the accepted windows nor the refused one are sent again by later runs.
    for _ in range(2):
        assert await aggregate_usage(worker_ctx) == {
            "recorded": 0,
            "reported": 0,
            "unavailable": 0,
            "stripe_failures": 0,
        }
    assert services.meter_events.call_count == 3

    listing = await cli("quarantine")
    assert listing.exit_code == 0, listing.output
    assert str(stored[1].id) in listing.output
    assert "parameter_invalid_integer" in listing.output

    services.refused.clear()
    retried = await cli("retry", "--window", str(stored[1].id))
    assert retried.exit_code == 0, retried.output
    assert [w.report_status for w in await usage_windows(engine)] == ["accepted", "accepted", "accepted"]
    assert services.meter_events.call_count == 4
    # Each send carries its window's own idempotency key; the retry is a new attempt.
    keys = [c.request.headers["Idempotency-Key"] for c in services.meter_events.calls]
    assert keys == [f"meter-event:{w.meter_event_identifier}:0" for w in stored] + [
        f"meter-event:{stored[1].meter_event_identifier}:1"
    ]
    nothing = await cli("retry", "--subscription", str(world.subscription_id))
    assert nothing.exit_code == 1
    assert "no quarantined window matches" in nothing.output
    assert sorted(e["payload"]["value"] for e in services.accepted.values()) == sorted(
        str(w.quantity) for w in stored
    )
    assert (await cli("quarantine")).output.count(str(world.subscription_id)) == 0


async def test_a_lost_answer_is_settled_by_stripes_replay_and_past_its_memory_never_resent(
    worker_ctx: Ctx, engine: AsyncEngine, settings: Settings, services: Services
) -> None:
    await pay_per_use(engine, started_at=datetime.now(UTC) - timedelta(days=2))
    answer: Any = services.meter_events.side_effect
    lost = {"left": 1}

    def stripe_takes_it_but_the_answer_is_lost(request: httpx.Request) -> httpx.Response:
        response: httpx.Response = answer(request)
        if lost["left"]:
            lost["left"] -= 1
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    services.meter_events.side_effect = stripe_takes_it_but_the_answer_is_lost
    first = await aggregate_usage(worker_ctx)
    assert first == {"recorded": 2, "reported": 1, "unavailable": 0, "stripe_failures": 1}
    second = await aggregate_usage(worker_ctx)
    assert second["reported"] == 1
    # Sent twice under the same key: Stripe replayed its first answer and counted it once.
    assert len(services.accepted) == 2
    assert [w.report_status for w in await usage_windows(engine)] == ["accepted", "accepted"]

    # A window sent more than a day ago and never answered: Stripe may have counted it and
    # forgotten the identifier since, so it is quarantined, not sent again.
    async with engine.begin() as connection:
        await connection.execute(
            update(UsageRecord).values(
                report_status="pending",
                reported_at=None,
                report_first_sent_at=datetime.now(UTC) - timedelta(hours=30),
                report_last_sent_at=None,
            )
        )
    calls = services.meter_events.call_count
    third = await aggregate_usage(worker_ctx)
    assert third["reported"] == 0
    assert services.meter_events.call_count == calls
    stored = await usage_windows(engine)
    assert [w.report_status for w in stored] == ["quarantined", "quarantined"]
    assert "check the meter's events in Stripe" in stored[0].report_error


# --- item 6: 64-bit counts ---------------------------------------------------------------------


async def test_a_day_of_three_billion_calls_is_recorded_and_reported_and_a_broken_count_stops_only_its_own(
    worker_ctx: Ctx, engine: AsyncEngine, services: Services
) -> None:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    started = day_start(yesterday) + timedelta(hours=1)
    huge = await pay_per_use(engine, started_at=started)
    broken = await pay_per_use(engine, started_at=started)
    refused = await pay_per_use(engine, started_at=started)
    plain = await pay_per_use(engine, started_at=started)
    services.counts.set(huge.subscription_id, yesterday, 3_000_000_000)
    services.counts.set(broken.subscription_id, yesterday, 10**20)  # not a count: metering is broken
    services.counts.set(refused.subscription_id, yesterday, 9_000_000_000_000_000_000)
    services.refused.add(f"usage:{refused.subscription_id}:{yesterday:%Y%m%d}")

    result = await aggregate_usage(worker_ctx)
    assert result == {"recorded": 3, "reported": 2, "unavailable": 1, "stripe_failures": 0}
    by_subscription = {w.subscription_id: w for w in await usage_windows(engine)}
    assert by_subscription[huge.subscription_id].quantity == 3_000_000_000
    assert by_subscription[huge.subscription_id].report_status == "accepted"
    assert by_subscription[refused.subscription_id].quantity == 9_000_000_000_000_000_000
    assert by_subscription[refused.subscription_id].report_status == "quarantined"
    assert by_subscription[plain.subscription_id].report_status == "accepted"
    assert broken.subscription_id not in by_subscription
    values = {e["payload"]["stripe_customer_id"]: e["payload"]["value"] for e in services.accepted.values()}
    assert values[huge.customer] == "3000000000"


# --- item 7: what we show is what Stripe bills ------------------------------------------------


async def test_usage_of_a_period_counts_exactly_the_windows_whose_meter_events_stripe_bills_in_it(
    engine: AsyncEngine, services: Services, client: httpx.AsyncClient, auth: Auth
) -> None:
    today = datetime.now(UTC).date()
    period_start = day_start(today - timedelta(days=3)) + timedelta(hours=10)
    key = uuid.uuid4().hex[:10]
    world = await make_world(
        engine,
        plan_type="pay_per_use",
        monthly_amount=None,
        price_per_call=Decimal("0.01"),
        call_limit=1000,
        status="active",
        started_at=period_start - timedelta(days=2),
        key=key,
    )
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == world.subscription_id)
            .values(current_period_start=period_start, current_period_end=period_start + timedelta(days=30))
        )
        # Whole days: the day the period starts in is billed in it (its event is that day's
        # last second); the day before is billed in the previous period.
        for days_ago, calls in ((4, 1), (3, 20), (2, 300), (1, 4000)):
            start = day_start(today - timedelta(days=days_ago))
            await connection.execute(
                insert(UsageRecord).values(
                    id=uuid.uuid4(),
                    subscription_id=world.subscription_id,
                    window_start=start,
                    window_end=start + timedelta(days=1),
                    quantity=calls,
                    successful_calls=calls,
                    failed_calls=0,
                    created_at=start,
                )
            )
    services.counts.down = True
    response = await client.get(
        f"/api/v1/subscriptions/{world.subscription_id}/usage", headers=auth(user_id=f"user-{key}")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["successful_calls"] == 4320
    assert body["estimated_amount"] == 4320  # 1 cent a call
    assert body["remaining_calls"] == 0
    assert body["over_limit"] is True


# --- item 3: the last day is billed ------------------------------------------------------------


@pytest.mark.parametrize("deletion_first", [True, False], ids=["deleted-first", "invoice-first"])
async def test_final_invoice_of_a_cancelled_pay_per_use_subscription_carries_every_call_once(
    worker_ctx: Ctx,
    engine: AsyncEngine,
    services: Services,
    client: httpx.AsyncClient,
    deletion_first: bool,
) -> None:
    started = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
    ended = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    world = await pay_per_use(engine, started_at=started)
    period = (int(started.timestamp()), int(ended.timestamp()))
    with clock.use(clock.ManualClock(datetime(2026, 11, 19, 0, 5, tzinfo=UTC))):
        await aggregate_usage(worker_ctx)  # the 16th .. 18th, as the cron did
    assert len(services.accepted) == 3

    at_period_end = subscription_obj(world, "active", period=period, cancel_at_period_end=True)
    deleted = subscription_obj(world, "canceled", period=period, canceled_at=period[1])
    final = invoice_obj(world, f"in_{uuid.uuid4().hex[:8]}", "draft", amount=0, period=period)
    with clock.use(clock.ManualClock(datetime(2026, 11, 20, 12, 0, 40, tzinfo=UTC))):
        await deliver(client, worker_ctx, event("customer.subscription.updated", at_period_end, created=100))
        final_created = event("invoice.created", final, created=period[1] + 2)
        deletion = event("customer.subscription.deleted", deleted, created=period[1] + 1)
        for payload in (deletion, final_created) if deletion_first else (final_created, deletion):
            assert await deliver(client, worker_ctx, payload) == "processed"
        # Every day, the last one's part until the end included, reached Stripe before the final
        # invoice is closed (by its draft's webhook), not by some later run.
        assert len(services.accepted) == 5
        # Redelivered, and the cron after it: nothing more goes to Stripe.
        await deliver(client, worker_ctx, final_created)
        await aggregate_usage(worker_ctx)
    with clock.use(clock.ManualClock(datetime(2026, 11, 21, 0, 5, tzinfo=UTC))):
        await aggregate_usage(worker_ctx)

    events = sorted(services.accepted.values(), key=lambda e: e["timestamp"])
    days = [date(2026, 11, d) for d in (16, 17, 18, 19, 20)]
    assert [int(e["payload"]["value"]) for e in events] == [100 + d.day for d in days]
    assert all(e["timestamp"] < period[1] for e in events)
    assert events[-1]["timestamp"] == period[1] - 1
    assert services.meter_events.call_count == 5
    stored = await usage_windows(engine)
    assert (stored[-1].window_start, stored[-1].window_end) == (day_start(days[-1]), ended)


# --- item 4: cancelling now invoices what was used ----------------------------------------------


PAY_PER_USE: dict[str, Any] = {"type": "pay_per_use", "price_per_call": "0.01"}
FLAT: dict[str, Any] = {"monthly_price": "29"}


async def _on_flat_with_30_calls_today(
    client: httpx.AsyncClient, auth: Auth, services: Services
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], dict[str, Any], date]:
    """A consumer on a flat plan whose API also has a pay-per-use one, with 30 calls counted today:
    (their headers, the subscription, the flat plan, the pay-per-use plan, today)."""
    headers, created, flat, metered = await _subscribed_to_one_of_two(client, auth, FLAT, PAY_PER_USE)
    today = datetime.now(UTC).date()
    services.counts.set(created["id"], today, 30)
    return headers, created, flat, metered, today


async def _assert_only_the_70_after_the_change_are_billed(
    services: Services, worker_ctx: Ctx, engine: AsyncEngine, subscription_id: str, today: date
) -> None:
    """70 more calls today, after the change to pay-per-use: only they are sent, and the day's
    windows split at the change."""
    assert await _sent_after_next_morning(services, worker_ctx, subscription_id, today, 100) == ["70"]
    stored = await usage_windows(engine, uuid.UUID(subscription_id))
    assert [(w.quantity, w.report_status) for w in stored] == [(30, "unbilled"), (70, "accepted")]


async def _plan_changed_at_stripe(
    settings: Settings, engine: AsyncEngine, subscription_id: str, plan: dict[str, Any]
) -> dict[str, Any]:
    """The subscription moved to `plan` at Stripe: the `customer.subscription.updated` event saying so."""
    snapshot = await change_price_at_stripe(settings, engine, subscription_id, plan["id"])
    return event("customer.subscription.updated", snapshot, created=int(datetime.now(UTC).timestamp()) + 5)


async def _subscribed_to_one_of_two(
    client: httpx.AsyncClient, auth: Auth, subscribed: dict[str, Any], other: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A consumer with a card subscribed to one of two plans of the same API (created first, the
    other second): (consumer headers, the subscription, its plan, the other plan)."""
    creator = auth("creator")
    api_id = new_api_id()
    plan = await create_plan(client, creator, api_id, **subscribed)
    other_plan = await create_plan(client, creator, api_id, **other)
    headers, created = await subscribed_consumer(client, auth, plan)
    return headers, created, plan, other_plan


@pytest.mark.parametrize(
    ("terms", "prorate"),
    [
        ({"type": "pay_per_use", "price_per_call": "0.01"}, False),
        ({"type": "subscription", "monthly_price": "29", "call_limit": 5000}, True),
    ],
    ids=["pay-per-use", "flat"],
)
async def test_cancelling_now_sends_the_usage_so_far_then_has_stripe_invoice_it_at_once(
    client: httpx.AsyncClient, auth: Auth, services: Services, terms: dict[str, Any], prorate: bool
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), **terms)
    headers, created = await subscribed_consumer(client, auth, plan)
    today = datetime.now(UTC).date()
    services.counts.set(created["id"], today, 42)

    response = await client.put(
        f"/api/v1/subscriptions/{created['id']}/cancel", json={"immediately": True}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    to_stripe = [c.request for c in services.mock.calls if c.request.url.host == "127.0.0.1"]
    kinds = [(r.method, r.url.path) for r in to_stripe]
    cancel = kinds.index(("DELETE", f"/v1/subscriptions/{created['stripe_subscription_id']}"))
    form = to_stripe[cancel].url.params  # DELETE: Stripe's params travel in the query
    assert form.get("invoice_now") == "true"
    assert form.get("prorate") == ("true" if prorate else None)
    meter_events = [n for n, kind in enumerate(kinds) if kind == ("POST", "/v1/billing/meter_events")]
    if terms["type"] == "pay_per_use":
        assert [p["payload[value]"] for p in services.sent()] == ["42"]
        assert meter_events == [cancel - 1]
    else:
        assert meter_events == []


async def test_downgrading_to_free_sends_the_usage_so_far_then_has_stripe_invoice_it_at_once(
    client: httpx.AsyncClient, auth: Auth, services: Services
) -> None:
    headers, created, _metered, free = await _subscribed_to_one_of_two(
        client, auth, {"type": "pay_per_use", "price_per_call": "0.01"}, {"type": "free", "call_limit": 100}
    )
    services.counts.set(created["id"], datetime.now(UTC).date(), 25)

    changed = await upgrade(client, headers, created["id"], free)
    assert changed.status_code == 200, changed.text
    to_stripe = [c.request for c in services.mock.calls if c.request.url.host == "127.0.0.1"]
    kinds = [(r.method, r.url.path) for r in to_stripe]
    cancel = kinds.index(("DELETE", f"/v1/subscriptions/{created['stripe_subscription_id']}"))
    assert to_stripe[cancel].url.params.get("invoice_now") == "true"
    assert to_stripe[cancel].url.params.get("prorate") == "true"
    assert kinds[cancel - 1] == ("POST", "/v1/billing/meter_events")
    assert [p["payload[value]"] for p in services.sent()] == ["25"]


# --- item 5: plan changes split usage at the moment of change ------------------------------------


async def test_calls_on_pay_per_use_before_a_change_to_a_flat_plan_are_billed_and_none_after(
    client: httpx.AsyncClient, auth: Auth, services: Services, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    headers, created, _metered, flat = await _subscribed_to_one_of_two(
        client,
        auth,
        {"type": "pay_per_use", "price_per_call": "0.01"},
        {"monthly_price": "29", "call_limit": 100_000},
    )
    today = datetime.now(UTC).date()
    services.counts.set(created["id"], today, 40)

    changed = await upgrade(client, headers, created["id"], flat)
    assert changed.status_code == 200, changed.text
    assert [p["payload[value]"] for p in services.sent()] == ["40"]

    # 60 more calls today, on the flat plan
    assert await _sent_after_next_morning(services, worker_ctx, created["id"], today, 100) == ["40"]
    stored = await usage_windows(engine, uuid.UUID(created["id"]))
    assert [(w.quantity, w.report_status) for w in stored] == [(40, "accepted"), (60, "unbilled")]
    assert stored[0].window_end == stored[1].window_start


async def test_calls_on_a_flat_plan_before_a_change_to_pay_per_use_are_not_billed_per_call(
    client: httpx.AsyncClient, auth: Auth, services: Services, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    headers, created, _flat, metered, today = await _on_flat_with_30_calls_today(client, auth, services)

    changed = await upgrade(client, headers, created["id"], metered)
    assert changed.status_code == 200, changed.text
    assert services.meter_events.call_count == 0

    await _assert_only_the_70_after_the_change_are_billed(services, worker_ctx, engine, created["id"], today)


async def test_a_plan_change_made_at_stripe_bills_the_calls_before_it_by_the_plan_they_were_made_on(
    client: httpx.AsyncClient,
    auth: Auth,
    services: Services,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    headers, created, flat, metered, today = await _on_flat_with_30_calls_today(client, auth, services)

    changed = await _plan_changed_at_stripe(settings, engine, created["id"], metered)
    # Until the calls before the change are counted, the plan does not move (the event is retried).
    services.counts.down = True
    with pytest.raises(Retry):
        await deliver(client, worker_ctx, changed)
    current = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert current["pricing_plan"]["id"] == flat["id"]
    services.counts.down = False
    assert await process_stripe_event(worker_ctx, changed["id"]) == "processed"
    current = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert current["pricing_plan"]["id"] == metered["id"]
    assert services.meter_events.call_count == 0

    await _assert_only_the_70_after_the_change_are_billed(services, worker_ctx, engine, created["id"], today)


async def test_a_change_at_stripe_from_pay_per_use_to_a_flat_plan_bills_the_calls_made_before_it(
    client: httpx.AsyncClient,
    auth: Auth,
    services: Services,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    _headers, created, _metered, flat = await _subscribed_to_one_of_two(client, auth, PAY_PER_USE, FLAT)
    today = datetime.now(UTC).date()
    services.counts.set(created["id"], today, 40)

    changed = await _plan_changed_at_stripe(settings, engine, created["id"], flat)
    assert await deliver(client, worker_ctx, changed) == "processed"
    assert [p["payload[value]"] for p in services.sent()] == ["40"]

    services.counts.set(created["id"], today, 100)  # 60 more calls today, on the flat plan
    with clock.use(_next_morning(today)):
        await aggregate_usage(worker_ctx)
        await deliver(client, worker_ctx, changed)  # redelivered: nothing more is sent
    assert [p["payload[value]"] for p in services.sent()] == ["40"]


async def test_billing_sync_finding_a_plan_change_made_at_stripe_bills_the_calls_before_it_by_the_old_plan(
    client: httpx.AsyncClient,
    auth: Auth,
    services: Services,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    headers, created, _flat, metered, today = await _on_flat_with_30_calls_today(client, auth, services)
    await change_price_at_stripe(settings, engine, created["id"], metered["id"])  # no webhook reaches us
    # Snapshots are dated by Stripe's answers, in whole seconds: sync's read must come a second
    # after the subscribe's answer to be the newer one, whatever our own clock says.
    await asyncio.sleep(1.1)

    async with httpx.AsyncClient() as http:
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        usage = UsageService(sessionmaker, StripeGateway(settings), settings, http)
        with clock.use(clock.ManualClock(datetime.now(UTC) + timedelta(minutes=1))):
            await sync_service(engine, settings, usage=usage).run()
    current = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert current["pricing_plan"]["id"] == metered["id"]

    # 70 more calls today, on pay-per-use
    assert await _sent_after_next_morning(services, worker_ctx, created["id"], today, 100) == ["70"]


async def test_a_plan_change_waits_while_the_usage_until_then_cannot_be_counted(
    client: httpx.AsyncClient, auth: Auth, services: Services, engine: AsyncEngine
) -> None:
    headers, created, metered, flat = await _subscribed_to_one_of_two(client, auth, PAY_PER_USE, FLAT)
    services.counts.down = True
    changed = await upgrade(client, headers, created["id"], flat)
    assert changed.status_code == 503, changed.text
    assert changed.json()["code"] == "usage_not_counted"
    current = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert current["pricing_plan"]["id"] == metered["id"]
