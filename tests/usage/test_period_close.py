"""The period close: the usage job's period-close pass settles each metered subscription's period,
batch by batch, once every window billed in it is recorded and sent; a renewal draft of a settled
period confirms it from the settlement alone, and a draft of any other runs the usage job."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from arq import Retry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import app.usage.service as usage_service
from app import clock
from app.config import Settings
from app.models import Subscription, UsagePeriodSettlement, UsageRecord
from app.stripe import StripeGateway
from app.usage.repository import UsageRepository
from app.usage.service import UsageRun, UsageService
from app.usage.windows import DAY, day_start, event_instant, in_period
from app.webhooks.jobs import process_stripe_event
from tests.support.billing_data import World, event, invoice_obj
from tests.support.usage import Metering, closing_pay_per_use, meter_event_api, usage_windows
from tests.support.worker import Ctx, send

NOW = datetime(2026, 11, 20, 14, 37, tzinfo=UTC)
START = NOW - timedelta(days=3)


@dataclass
class Stripe:
    meter_events: respx.Route
    # 1-based numbers of the meter event calls that get a 500 (more may be added as a test goes).
    failing: set[int]

    def fail_next(self, calls: int) -> None:
        self.failing.update(range(self.meter_events.call_count + 1, self.meter_events.call_count + calls + 1))


@pytest.fixture
def stripe(settings: Settings) -> Iterator[Stripe]:
    """At NOW: the metering service's stand-in and Stripe's meter events endpoint."""
    failing: set[int] = set()
    with clock.use(clock.ManualClock(NOW)), respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api({}, fail_calls=failing)
        yield Stripe(meter_events, failing)


async def closing_subscription(engine: AsyncEngine, end: datetime = NOW) -> World:
    """A pay-per-use subscription started at START whose current period [START, end) closes."""
    return await closing_pay_per_use(engine, START, end)


async def usage_job(engine: AsyncEngine, settings: Settings) -> UsageRun:
    """One run of the usage job's pass, as the worker runs it."""
    async with httpx.AsyncClient() as http:
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        return await UsageService(sessionmaker, StripeGateway(settings), settings, http).aggregate()


async def settlements(engine: AsyncEngine) -> dict[uuid.UUID, Any]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(UsagePeriodSettlement))).all()
    return {row.subscription_id: row for row in rows}


async def recorded_calls(engine: AsyncEngine, world: World, start: datetime, end: datetime) -> int:
    """The period's calls summed from its windows here: those whose meter event Stripe bills in it."""
    windows = await usage_windows(engine, world.subscription_id)
    return sum(w.quantity for w in windows if in_period(event_instant(w.window_end), start, end))


def renewal_draft(world: World, start: datetime = START, end: datetime = NOW) -> dict[str, Any]:
    draft = invoice_obj(
        world,
        f"in_{uuid.uuid4().hex[:8]}",
        "draft",
        amount=0,
        period=(int(start.timestamp()), int(end.timestamp())),
    )
    return event("invoice.created", draft, created=int(end.timestamp()) + 60)


@pytest.fixture
def usage_job_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[uuid.UUID] | None]:
    """The subscriptions of each run of the usage job (None: all), which runs as it does."""
    runs: list[list[uuid.UUID] | None] = []
    aggregate = UsageService.aggregate

    async def counted(self: UsageService, **options: Any) -> UsageRun:
        only = options.get("only")
        runs.append(list(only) if only is not None else None)
        return await aggregate(self, **options)

    monkeypatch.setattr(UsageService, "aggregate", counted)
    return runs


async def test_a_settled_periods_calls_equal_its_recorded_windows_and_its_draft_runs_no_usage_job(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
    stripe: Stripe,
    usage_job_runs: list[list[uuid.UUID] | None],
) -> None:
    closing = await closing_subscription(engine)
    later = await closing_subscription(engine, end=NOW + timedelta(days=10))
    run = await usage_job(engine, settings)
    assert (run.recorded, run.reported, run.settled) == (6, 6, 1)
    settled = await settlements(engine)
    assert list(settled) == [closing.subscription_id]  # the other period is still open
    assert settled[closing.subscription_id].calls == await recorded_calls(engine, closing, START, NOW) > 0
    usage_job_runs.clear()
    sent = stripe.meter_events.call_count

    settled_draft = renewal_draft(closing)
    assert (await send(client, settled_draft)).status_code == 200
    assert await process_stripe_event(worker_ctx, settled_draft["id"]) == "processed"
    assert usage_job_runs == []
    # A draft of a period not settled runs the usage job for its subscription.
    open_draft = renewal_draft(later)
    assert (await send(client, open_draft)).status_code == 200
    assert await process_stripe_event(worker_ctx, open_draft["id"]) == "processed"
    assert usage_job_runs == [[later.subscription_id]]
    assert stripe.meter_events.call_count == sent


async def test_a_window_recorded_late_in_a_settled_period_unsettles_it_and_holds_its_draft(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings, stripe: Stripe
) -> None:
    world = await closing_subscription(engine)
    assert (await usage_job(engine, settings)).settled == 1
    settled_calls = (await settlements(engine))[world.subscription_id].calls
    # Cancelled at the period's last instant: its partial last day is billed in the period, and
    # Stripe fails that window's meter event (now, and when the draft sends it again).
    stripe.fail_next(2)
    async with httpx.AsyncClient() as http:
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        usage = UsageService(sessionmaker, StripeGateway(settings), settings, http)
        assert not await usage.flush(world.subscription_id, NOW)
    assert await settlements(engine) == {}

    draft = renewal_draft(world)
    assert (await send(client, draft)).status_code == 200
    with pytest.raises(Retry):
        await process_stripe_event(worker_ctx, draft["id"])
    assert await process_stripe_event({**worker_ctx, "job_try": 2}, draft["id"]) == "processed"
    assert all(w.reported_at is not None for w in await usage_windows(engine, world.subscription_id))
    # The draft's usage job settled the period again, with the late window.
    resettled = (await settlements(engine))[world.subscription_id].calls
    assert resettled == await recorded_calls(engine, world, START, NOW) > settled_calls


async def test_a_window_left_unsent_holds_the_settlement_and_a_quarantined_one_does_not(
    engine: AsyncEngine, settings: Settings, stripe: Stripe
) -> None:
    world = await closing_subscription(engine)
    stripe.fail_next(1)
    run = await usage_job(engine, settings)
    assert (run.reported, run.stripe_failures, run.settled) == (2, 1, 0)
    assert await settlements(engine) == {}
    # Sent on the next run: settled.
    assert (await usage_job(engine, settings)).settled == 1
    assert (await settlements(engine))[world.subscription_id].calls == await recorded_calls(
        engine, world, START, NOW
    )

    other = await closing_subscription(engine)
    refused = meter_event_api({}, refuse=lambda form: form["identifier"].endswith("20261118"))
    stripe.meter_events.side_effect = refused
    run = await usage_job(engine, settings)
    assert (run.quarantined, run.settled) == (1, 1)
    assert (await settlements(engine))[other.subscription_id].calls == await recorded_calls(
        engine, other, START, NOW
    )


async def test_the_period_close_run_twice_settles_each_period_once_and_changes_nothing(
    engine: AsyncEngine, settings: Settings, stripe: Stripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    worlds = [await closing_subscription(engine) for _ in range(3)]
    monkeypatch.setattr(usage_service, "SETTLE_BATCH", 2)  # a batch's ready periods settled in two parts
    first = await usage_job(engine, settings)
    assert first.settled == 3
    settled = await settlements(engine)
    assert sorted(settled) == sorted(w.subscription_id for w in worlds)
    sent = stripe.meter_events.call_count
    again = await usage_job(engine, settings)
    assert (again.recorded, again.reported, again.settled) == (0, 0, 0)
    assert await settlements(engine) == settled
    assert stripe.meter_events.call_count == sent


async def test_subscriptions_with_nothing_left_to_do_are_counted_and_passed_over_to_reach_one_with_work(
    engine: AsyncEngine, settings: Settings, stripe: Stripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's read leaves out the subscriptions with nothing to do (every ended day in and
    sent, settled, no call limit): they still count as read, so batches go on past them."""
    worlds = [await closing_subscription(engine) for _ in range(4)]
    assert (await usage_job(engine, settings)).settled == 4
    last = max(w.subscription_id for w in worlds)  # read last, after the three with nothing to do
    window = (await usage_windows(engine, last))[-1]
    async with async_sessionmaker(engine).begin() as session:  # quarantined, then re-queued by an operator
        await session.execute(
            update(UsageRecord)
            .where(UsageRecord.id == window.id)
            .values(report_status="quarantined", reported_at=None)
        )
        await UsageRepository(session).requeue(window_id=window.id)
    monkeypatch.setattr(usage_service, "BATCH_SIZE", 1)
    monkeypatch.setattr(usage_service, "SETTLE_BATCH", 1)
    sent = stripe.meter_events.call_count
    run = await usage_job(engine, settings)
    # Sent again (Stripe refuses an identifier it has seen: quarantined again), then settled.
    assert (run.subscriptions, run.recorded, run.quarantined, run.settled) == (4, 0, 1, 1)
    assert stripe.meter_events.call_count == sent + 1


async def test_a_period_close_killed_mid_pass_resumes_where_it_stopped(
    engine: AsyncEngine, settings: Settings, stripe: Stripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    worlds = [await closing_subscription(engine) for _ in range(3)]
    monkeypatch.setattr(usage_service, "BATCH_SIZE", 1)
    settle = UsageRepository.settle_ready
    batches = 0

    async def killed_on_the_second_batch(self: UsageRepository, **options: Any) -> Any:
        nonlocal batches
        read = await settle(self, **options)
        batches += read.settled > 0
        if batches == 2:
            raise RuntimeError("worker killed before the batch's transaction commits")
        return read

    monkeypatch.setattr(UsageRepository, "settle_ready", killed_on_the_second_batch)
    with pytest.raises(RuntimeError, match="worker killed"):
        await usage_job(engine, settings)
    first = await settlements(engine)
    assert len(first) == 1  # the first batch's settlement is in; the second's went with its transaction
    monkeypatch.setattr(UsageRepository, "settle_ready", settle)

    resumed = await usage_job(engine, settings)
    assert resumed.settled == 2
    settled = await settlements(engine)
    assert sorted(settled) == sorted(w.subscription_id for w in worlds)
    assert all(settled[key] == row for key, row in first.items())
    for world in worlds:
        assert settled[world.subscription_id].calls == await recorded_calls(engine, world, START, NOW)
    # Every window went to Stripe once, the third subscription's on the resumed run.
    assert stripe.meter_events.call_count == 9


async def test_a_plan_changes_usage_flush_waits_for_no_more_than_one_part_of_the_period_close(
    engine: AsyncEngine, settings: Settings, stripe: Stripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass reads its batch in parts, each holding the settlement lock alone only while it is
    read and settled: the flush before a plan change or a cancellation records and sends the
    subscription's windows while the pass is held between two parts of one batch."""
    world, other = await closing_subscription(engine), await closing_subscription(engine)
    monkeypatch.setattr(usage_service, "SETTLE_BATCH", 1)  # one batch of two, read in two parts
    read_and_settle = UsageService._read_and_settle
    between, release = asyncio.Event(), asyncio.Event()

    async def held_after_the_first_part(self: UsageService, run: UsageRun, **options: Any) -> Any:
        read = await read_and_settle(self, run, **options)
        if options.get("only") is None and not between.is_set():  # the batch's first part
            between.set()
            await release.wait()
        return read

    monkeypatch.setattr(UsageService, "_read_and_settle", held_after_the_first_part)
    job = asyncio.create_task(usage_job(engine, settings))
    try:
        await asyncio.wait_for(between.wait(), 30)
        async with httpx.AsyncClient() as http:
            sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
            usage = UsageService(sessionmaker, StripeGateway(settings), settings, http)
            assert await asyncio.wait_for(usage.flush(world.subscription_id, NOW), 10)
        assert not job.done()
    finally:
        release.set()
    await job
    windows = await usage_windows(engine, world.subscription_id)
    # Every window from the subscription's first day through the change, each once, all sent.
    assert [w.window_start for w in windows] == [day_start(START.date()) + n * DAY for n in range(4)]
    assert [w.window_end for w in windows][-1] == NOW
    assert all(a.window_end == b.window_start for a, b in itertools.pairwise(windows))
    assert all(w.reported_at is not None and w.quantity > 0 for w in windows)
    # Each window went to Stripe once, the other subscription's (recorded by the pass) too.
    assert stripe.meter_events.call_count == len(windows) + len(
        await usage_windows(engine, other.subscription_id)
    )


async def test_the_period_close_settles_no_period_a_writer_is_still_recording_a_window_in(
    engine: AsyncEngine, settings: Settings, stripe: Stripe
) -> None:
    """The pass reads under the settlement lock, so it waits for a writer recording a window
    meanwhile (here a plan change's flush: the closing day's part before the change, billed in
    the period) and then sees that window, sends it and settles the period with it."""
    world = await closing_subscription(engine)
    assert (await usage_job(engine, settings)).settled == 1  # every whole day in, sent and settled
    closing_day = day_start(NOW.date())
    window = {
        "subscription_id": world.subscription_id,
        "window_start": closing_day,
        "window_end": closing_day + timedelta(hours=10),  # billed in the period, which ends at NOW
        "quantity": 7,
        "successful_calls": 7,
        "failed_calls": 0,
        "meter_event_identifier": f"usage:{world.subscription_id}:{closing_day:%Y%m%d}",
        "report_status": "pending",
    }
    async with async_sessionmaker(engine).begin() as session:
        await UsageRepository(session).insert_records([window])  # uncommitted while the pass runs
        job = asyncio.create_task(usage_job(engine, settings))
        await asyncio.sleep(1)
        assert not job.done()  # it waits for the writer's commit to read
    run = await job
    assert (run.recorded, run.reported, run.settled) == (0, 1, 1)
    calls = (await settlements(engine))[world.subscription_id].calls
    assert calls == await recorded_calls(engine, world, START, NOW) > 7


async def test_a_periods_calls_and_what_holds_it_are_the_windows_billed_in_it_not_those_around_it(
    engine: AsyncEngine, settings: Settings, stripe: Stripe
) -> None:
    """The windows on either side of a period (the day before it began, the closing day after
    it ended) are read with it: neither counts in its calls, and one left unsent does not hold it."""
    start = day_start(START.date())  # a period that began at midnight, after a renewal
    world = await closing_pay_per_use(engine, start - 2 * DAY, NOW)
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == world.subscription_id)
            .values(current_period_start=start)
        )
    closing_day = NOW.strftime("%Y%m%d")
    answer = meter_event_api({})

    def failing_the_closing_day(request: httpx.Request) -> httpx.Response:
        form = httpx.QueryParams(request.content.decode())
        if form["identifier"].endswith(closing_day):
            return httpx.Response(500, json={"error": {"type": "api_error", "message": "try again"}})
        response: httpx.Response = answer(request)
        return response

    stripe.meter_events.side_effect = failing_the_closing_day
    with clock.use(clock.ManualClock(NOW + DAY)):  # the closing day has ended; no renewal yet
        run = await usage_job(engine, settings)
    assert (run.stripe_failures, run.settled) == (1, 1)
    windows = await usage_windows(engine, world.subscription_id)
    billed_around = [w for w in windows if not in_period(event_instant(w.window_end), start, NOW)]
    assert [w.window_start for w in billed_around] == [start - 2 * DAY, start - DAY, day_start(NOW.date())]
    assert all(w.quantity > 0 for w in billed_around)
    calls = (await settlements(engine))[world.subscription_id].calls
    assert calls == await recorded_calls(engine, world, start, NOW) > 0
