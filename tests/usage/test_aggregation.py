"""Usage aggregation: metering -> usage_records per day -> Stripe meter events, exactly once."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from arq import Retry
from sqlalchemy import DateTime, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app import clock
from app.config import Settings
from app.models import JobRun, OutboxMessage, Subscription
from app.periods import add_months
from app.usage.jobs import aggregate_usage
from app.usage.repository import (
    PERIOD_CALLS_EACH,
    PERIOD_CALLS_SHARED,
    PERIOD_OVERRUNS_EACH,
    PERIOD_OVERRUNS_SHARED,
    UsageRepository,
    period_calls_query,
)
from app.usage.windows import DAY, covers_period, day_start, event_instant, in_period, meter_event_identifier
from app.webhooks.jobs import process_stripe_event
from tests.support.billing_data import event, invoice_obj, make_world
from tests.support.factories import sign_webhook
from tests.support.usage import Metering, closing_pay_per_use, meter_event_api, pay_per_use, usage_windows
from tests.support.worker import Ctx, send


@pytest.fixture
def stripe_and_metering(settings: Settings) -> Iterator[tuple[Metering, respx.Route]]:
    with respx.mock(assert_all_called=False) as mock:
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api({})
        yield Metering(mock), meter_events


def outcome(
    *, recorded: int, reported: int, unavailable: int = 0, stripe_failures: int = 0
) -> dict[str, int]:
    return {
        "recorded": recorded,
        "reported": reported,
        "unavailable": unavailable,
        "stripe_failures": stripe_failures,
    }


async def test_each_ended_day_is_recorded_and_reported_once(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    _, meter_events = stripe_and_metering
    world = await pay_per_use(engine)
    first = await aggregate_usage(worker_ctx)
    assert first == {"recorded": 3, "reported": 3, "unavailable": 0, "stripe_failures": 0}
    rerun = await aggregate_usage(worker_ctx)
    assert rerun == {"recorded": 0, "reported": 0, "unavailable": 0, "stripe_failures": 0}
    assert meter_events.call_count == 3
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (3, 2, 1)]
    stored = await usage_windows(engine)
    assert [r.window_start.date() for r in stored] == days
    assert [r.quantity for r in stored] == [100 + d.day for d in days]
    assert [r.meter_event_identifier for r in stored] == [
        meter_event_identifier(world.subscription_id, day_start(d)) for d in days
    ]
    assert all(r.reported_at is not None for r in stored)
    sent = [httpx.QueryParams(call.request.content.decode()) for call in meter_events.calls]
    assert [p["identifier"] for p in sent] == [r.meter_event_identifier for r in stored]
    assert [p["payload[value]"] for p in sent] == [str(r.quantity) for r in stored]
    assert {p["payload[stripe_customer_id]"] for p in sent} == {world.customer}


async def test_metering_down_records_nothing_and_the_next_run_catches_up(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    metering, meter_events = stripe_and_metering
    await pay_per_use(engine)
    metering.down = True
    assert await aggregate_usage(worker_ctx) == {
        "recorded": 0,
        "reported": 0,
        "unavailable": 1,
        "stripe_failures": 0,
    }
    assert await usage_windows(engine) == []
    metering.down = False
    assert await aggregate_usage(worker_ctx) == {
        "recorded": 3,
        "reported": 3,
        "unavailable": 0,
        "stripe_failures": 0,
    }
    assert meter_events.call_count == 3


async def test_two_workers_on_the_same_windows_record_and_report_once(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    _, meter_events = stripe_and_metering
    await pay_per_use(engine, days_ago=5)
    results = await asyncio.gather(aggregate_usage(worker_ctx), aggregate_usage(worker_ctx))
    assert sum(r["recorded"] for r in results) == 5
    assert sum(r["reported"] for r in results) == 5
    assert meter_events.call_count == 5
    assert len(await usage_windows(engine)) == 5


async def test_call_limited_subscription_is_recorded_but_not_sent_to_stripe(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    _, meter_events = stripe_and_metering
    await make_world(
        engine, call_limit=1000, status="active", started_at=datetime.now(UTC) - timedelta(days=2)
    )
    await make_world(engine, status="active", started_at=datetime.now(UTC) - timedelta(days=2))
    assert await aggregate_usage(worker_ctx) == {
        "recorded": 2,
        "reported": 0,
        "unavailable": 0,
        "stripe_failures": 0,
    }
    assert meter_events.call_count == 0
    assert all(r.meter_event_identifier is None for r in await usage_windows(engine))


async def test_on_demand_run_covers_only_the_given_subscription(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    world = await pay_per_use(engine, days_ago=1)
    await pay_per_use(engine, days_ago=1)
    result = await aggregate_usage(worker_ctx, str(world.subscription_id))
    assert result == {"recorded": 1, "reported": 1, "unavailable": 0, "stripe_failures": 0}
    assert [r.subscription_id for r in await usage_windows(engine)] == [world.subscription_id]


async def test_a_cancelled_subscription_is_read_until_its_last_windows_are_in_and_then_left_alone(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    now = datetime.now(UTC)
    lately = await pay_per_use(engine, days_ago=50)
    long_ago = await pay_per_use(engine, days_ago=50)
    async with engine.begin() as connection:
        for world, days in ((lately, 10), (long_ago, 40)):
            await connection.execute(
                update(Subscription)
                .where(Subscription.id == world.subscription_id)
                .values(status="cancelled", cancelled_at=now - timedelta(days=days))
            )
    result = await aggregate_usage(worker_ctx)
    assert result["recorded"] > 0
    assert {r.subscription_id for r in await usage_windows(engine)} == {lately.subscription_id}


async def test_draft_invoice_waits_for_usage_until_metering_answers(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    stripe_and_metering: tuple[Metering, respx.Route],
) -> None:
    metering, meter_events = stripe_and_metering
    world = await pay_per_use(engine, days_ago=2)
    draft = invoice_obj(world, f"in_{uuid.uuid4().hex[:8]}", "draft", amount=0, period=(1, 2))
    payload = event("invoice.created", draft, created=5)
    await send(client, payload)
    metering.down = True
    with pytest.raises(Retry):
        await process_stripe_event(worker_ctx, payload["id"])
    assert meter_events.call_count == 0
    metering.down = False
    assert await process_stripe_event({**worker_ctx, "job_try": 2}, payload["id"]) == "processed"
    assert meter_events.call_count == 2
    assert all(r.reported_at is not None for r in await usage_windows(engine))


async def test_stripe_failing_on_one_window_reports_its_neighbours_and_sends_it_next_run(
    worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    accepted: dict[str, dict[str, Any]] = {}
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api(accepted, fail_calls={2})
        await pay_per_use(engine)
        first = await aggregate_usage(worker_ctx)
        assert first == {"recorded": 3, "reported": 2, "unavailable": 0, "stripe_failures": 1}
        assert [r.report_status for r in await usage_windows(engine)] == ["accepted", "pending", "accepted"]
        second = await aggregate_usage(worker_ctx)
        assert second == {"recorded": 0, "reported": 1, "unavailable": 0, "stripe_failures": 0}
        assert await aggregate_usage(worker_ctx) == outcome(recorded=0, reported=0)
    assert meter_events.call_count == 4
    assert sorted(accepted) == sorted(r.meter_event_identifier for r in await usage_windows(engine))
    assert [e["payload"]["value"] for e in sorted(accepted.values(), key=lambda e: e["timestamp"])] == [
        str(r.quantity) for r in await usage_windows(engine)
    ]


async def notifications(engine: AsyncEngine, topic: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        statement = select(OutboxMessage.payload).where(OutboxMessage.kind == "notify")
        return [p for (p,) in (await connection.execute(statement)).all() if p["topic"] == topic]


async def test_going_over_the_call_limit_is_flagged_once_per_period(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    started = datetime.now(UTC) - timedelta(days=3)
    world = await make_world(engine, call_limit=150, status="active", started_at=started)
    await make_world(engine, call_limit=100_000, status="active", started_at=started)
    await asyncio.gather(aggregate_usage(worker_ctx), aggregate_usage(worker_ctx))
    await aggregate_usage(worker_ctx)
    flagged = await notifications(engine, "quota_overrun")
    # The first day's meter event (its last second) falls inside the period, as Stripe bills it.
    counted = [r.quantity for r in await usage_windows(engine) if r.subscription_id == world.subscription_id]
    assert flagged == [
        {
            "topic": "quota_overrun",
            "consumer_id": str(world.consumer_id),
            "period_start": started.isoformat(),
            "period_end": add_months(started, 1).isoformat(),
            "recorded_calls": sum(counted),
            "call_limit": 150,
        }
    ]
    async with engine.connect() as connection:
        claims = (await connection.execute(select(JobRun).where(JobRun.job == "quota_overrun"))).all()
    assert [(c.subject, c.period) for c in claims] == [(str(world.subscription_id), started.isoformat())]


async def test_a_new_period_over_the_limit_is_flagged_again(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    world = await make_world(
        engine, call_limit=50, status="active", started_at=datetime.now(UTC) - timedelta(days=4)
    )
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), tzinfo=UTC)
    for period_start in (midnight - timedelta(days=4), midnight - timedelta(days=2)):
        async with engine.begin() as connection:
            await connection.execute(
                update(Subscription)
                .where(Subscription.id == world.subscription_id)
                .values(
                    current_period_start=period_start, current_period_end=period_start + timedelta(days=30)
                )
            )
        await aggregate_usage(worker_ctx)
        await aggregate_usage(worker_ctx)
    flagged = await notifications(engine, "quota_overrun")
    assert [f["period_start"] for f in flagged] == [
        (midnight - timedelta(days=4)).isoformat(),
        (midnight - timedelta(days=2)).isoformat(),
    ]
    assert [f["recorded_calls"] for f in flagged] == [
        sum(100 + (midnight - timedelta(days=n)).day for n in (4, 3, 2, 1)),
        sum(100 + (midnight - timedelta(days=n)).day for n in (2, 1)),
    ]


async def test_usage_within_the_call_limit_is_not_flagged(
    worker_ctx: Ctx, engine: AsyncEngine, stripe_and_metering: tuple[Metering, respx.Route]
) -> None:
    await make_world(
        engine, call_limit=1000, status="active", started_at=datetime.now(UTC) - timedelta(days=3)
    )
    await aggregate_usage(worker_ctx)
    assert await notifications(engine, "quota_overrun") == []


async def test_a_slow_meter_event_answer_holds_up_no_other_window(
    worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    accepted: dict[str, dict[str, Any]] = {}
    stripe: Callable[[httpx.Request], httpx.Response] = meter_event_api(accepted)
    neighbours_answered = asyncio.Event()
    calls = neighbours = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls, neighbours
        calls += 1
        if calls == 1:
            # The first window's answer comes only once both its neighbours have theirs.
            await asyncio.wait_for(neighbours_answered.wait(), timeout=5)
            return stripe(request)
        response = stripe(request)
        neighbours += 1
        if neighbours == 2:
            neighbours_answered.set()
        return response

    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events").side_effect = answer
        await pay_per_use(engine)
        assert await aggregate_usage(worker_ctx) == outcome(recorded=3, reported=3)
    assert len(accepted) == 3


def daily_windows(subscription_id: uuid.UUID, first_day: datetime, days: range) -> list[dict[str, Any]]:
    """Rows of `insert_records`: one pending window a day, from `first_day` on."""
    rows = []
    for n in days:
        start = first_day + timedelta(days=n)
        rows.append(
            {
                "subscription_id": subscription_id,
                "window_start": start,
                "window_end": start + timedelta(days=1),
                "quantity": 10 + n,
                "successful_calls": 10 + n,
                "failed_calls": 0,
                "meter_event_identifier": meter_event_identifier(subscription_id, start),
                "report_status": "pending",
            }
        )
    return rows


async def test_a_batch_with_windows_already_recorded_adds_only_the_new_ones_within_its_transaction(
    engine: AsyncEngine,
) -> None:
    world = await pay_per_use(engine, days_ago=6)
    first_day = day_start(datetime.now(UTC)) - timedelta(days=5)

    def windows(days: range) -> list[dict[str, Any]]:
        return daily_windows(world.subscription_id, first_day, days)

    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with sessionmaker.begin() as session:
        assert await UsageRepository(session).insert_records(windows(range(3))) == 3
    async with sessionmaker.begin() as session:
        # A write earlier in the same transaction survives the duplicate the batch meets.
        await session.execute(
            update(Subscription).where(Subscription.id == world.subscription_id).values(api_key_id="key_kept")
        )
        assert await UsageRepository(session).insert_records(windows(range(1, 5))) == 2
        assert await UsageRepository(session).insert_records(windows(range(5))) == 0
    recorded = await usage_windows(engine, world.subscription_id)
    assert [r.quantity for r in recorded] == [10, 11, 12, 13, 14]
    async with engine.connect() as connection:
        kept = await connection.scalar(
            select(Subscription.api_key_id).where(Subscription.id == world.subscription_id)
        )
    assert kept == "key_kept"


async def test_windows_recorded_later_get_ids_that_sort_after_the_earlier_ones(engine: AsyncEngine) -> None:
    """Ids are time-ordered (uuidv7, given by the database): the primary key's index grows at its
    right edge, so a batch's inserts touch a few pages of it however large the table is."""
    world = await pay_per_use(engine, days_ago=6)
    first_day = day_start(datetime.now(UTC)) - timedelta(days=5)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    for days in (range(3), range(3, 5)):  # two runs of the worker, one batch each
        async with sessionmaker.begin() as session:
            await UsageRepository(session).insert_records(
                daily_windows(world.subscription_id, first_day, days)
            )
    ids = [r.id for r in await usage_windows(engine, world.subscription_id)]  # by window start
    assert len(ids) == 5
    assert {i.version for i in ids} == {7}
    assert ids == sorted(ids)


async def settled(engine: AsyncEngine, world_id: uuid.UUID, start: datetime, end: datetime) -> int | None:
    """The period's calls as a renewal draft of [start, end) finds them settled, else None."""
    async with async_sessionmaker(engine)() as session:
        subscription, calls = await UsageRepository(session).draft_subscription(world_id, start, end)
        assert subscription is not None
        return calls


async def period_sum(engine: AsyncEngine, world_id: uuid.UUID, start: datetime, end: datetime) -> int:
    async with async_sessionmaker(engine)() as session:
        return (await UsageRepository(session).period_calls([(world_id, start, end)]))[world_id]


async def test_the_batched_period_sum_bills_each_window_in_the_period_its_meter_event_falls_in(
    engine: AsyncEngine,
) -> None:
    """The worker's batched period sum, read period by period (subscriptions sharing periods)
    and subscription by subscription (a period each), in full and as the quota check reads it
    (only the subscriptions over a limit), against the rule in Python: a window
    counts in the period holding its last second. Each subscription has daily windows and one
    day split at 13:00; the periods start and end at midnight, at the split, and a second
    either side of it."""
    first_day = day_start(datetime.now(UTC)) - timedelta(days=12)
    split = first_day + timedelta(days=4, hours=13)
    worlds = [await pay_per_use(engine, days_ago=13) for _ in range(8)]
    recorded: dict[uuid.UUID, list[tuple[datetime, datetime, int]]] = {}
    rows = []
    for n, world in enumerate(worlds):
        bounds = [first_day + timedelta(days=d) for d in range(11)]
        bounds.insert(5, split)
        windows = [
            (start, end, (n + 1) * 100 + i) for i, (start, end) in enumerate(itertools.pairwise(bounds))
        ]
        recorded[world.subscription_id] = windows
        rows += [
            {
                "subscription_id": world.subscription_id,
                "window_start": start,
                "window_end": end,
                "quantity": quantity,
                "successful_calls": quantity,
                "failed_calls": 0,
                "meter_event_identifier": meter_event_identifier(world.subscription_id, start),
                "report_status": "pending",
            }
            for start, end, quantity in windows
        ]
    async with async_sessionmaker(engine).begin() as session:
        assert await UsageRepository(session).insert_records(rows) == len(rows)
    second = timedelta(seconds=1)
    periods = [
        (first_day + 2 * DAY, first_day + 7 * DAY),
        (split, first_day + 8 * DAY),
        (split - second, split + second),
        (split + second, first_day + 9 * DAY - second),
        (first_day - DAY, split),
        (first_day + 20 * DAY, first_day + 50 * DAY),  # no window in it
        (first_day + DAY - second, first_day + 3 * DAY),
        (first_day + 3 * DAY, split - second),
    ]

    def expected(batch: list[tuple[uuid.UUID, datetime, datetime]]) -> dict[uuid.UUID, int]:
        sums: dict[uuid.UUID, int] = {}
        for id_, start, end in batch:
            billed = [
                q for _, window_end, q in recorded[id_] if in_period(event_instant(window_end), start, end)
            ]
            if billed:
                sums[id_] = sum(billed)
        return sums

    Batch = list[tuple[uuid.UUID, datetime, datetime]]

    def limits_at(batch: Batch, sums: dict[uuid.UUID, int], shift: int, *, shared: bool) -> list[int]:
        firsts: dict[tuple[datetime, datetime], uuid.UUID] = {}
        for id_, start, end in batch:
            firsts.setdefault((start, end), id_)
        at = [firsts[start, end] if shared else id_ for id_, start, end in batch]
        return [max(sums.get(id_, 0) + shift, 0) for id_ in at]  # (a limit is never negative)

    ids = [w.subscription_id for w in worlds]
    shared = [  # two periods of four subscriptions each, for every pair of periods
        [(id_, *(a if n % 2 else b)) for n, id_ in enumerate(ids)]
        for a, b in itertools.combinations(periods, 2)
    ]
    own = [[(id_, *periods[(n + shift) % len(periods)]) for n, id_ in enumerate(ids)] for shift in range(8)]
    kinds = (
        (shared, PERIOD_CALLS_SHARED, PERIOD_OVERRUNS_SHARED),
        (own, PERIOD_CALLS_EACH, PERIOD_OVERRUNS_EACH),
    )
    flagged = [0, 0]  # over their limit, read subscription by subscription and period by period
    async with async_sessionmaker(engine)() as session:
        repo = UsageRepository(session)
        for batches, statement, overruns in kinds:
            for batch in batches:
                assert period_calls_query(batch)[0] is statement
                sums = expected(batch)
                assert await repo.period_calls(batch) == sums, batch
                # The quota check's form, with a limit just under, at and just over a sum: each
                # subscription's own, or a shared period's first subscription's for all of it
                # (its others' sums are larger or smaller).
                for shift in (-1, 0, 1):
                    limits = limits_at(batch, sums, shift, shared=statement is PERIOD_CALLS_SHARED)
                    pairs = zip(batch, limits, strict=True)
                    over = {id_: sums[id_] for (id_, _, _), limit in pairs if sums.get(id_, 0) > limit}
                    flagged[statement is PERIOD_CALLS_SHARED] += len(over)
                    assert period_calls_query(batch, limits)[0] is overruns
                    assert await repo.period_overruns(batch, limits) == over, (batch, limits)
    assert all(flagged)


async def test_a_period_is_settled_only_once_every_window_billed_in_it_is_recorded_and_sent(
    worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    """What a renewal draft relies on to skip the usage job: the usage job's period-close pass
    settles the period only when it has nothing left to record or send for it, with its sum."""
    now = datetime(2026, 11, 20, 14, 37, tzinfo=UTC)
    start = now - timedelta(days=3)
    with clock.use(clock.ManualClock(now)), respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api({}, fail_calls={2})
        world = await closing_pay_per_use(engine, start, now)
        assert await settled(engine, world.subscription_id, start, now) is None  # nothing recorded
        assert await aggregate_usage(worker_ctx) == outcome(recorded=3, reported=2, stripe_failures=1)
        assert await settled(engine, world.subscription_id, start, now) is None  # one window unsent
        assert await aggregate_usage(worker_ctx) == outcome(recorded=0, reported=1)
        calls = await settled(engine, world.subscription_id, start, now)
        assert calls == await period_sum(engine, world.subscription_id, start, now) > 0
        # Ended mid-day: its last, partial window (up to the end) is still to record.
        async with engine.begin() as connection:
            await connection.execute(
                update(Subscription)
                .where(Subscription.id == world.subscription_id)
                .values(status="cancelled", cancelled_at=now)
            )
        assert await settled(engine, world.subscription_id, start, now) is None
        assert await aggregate_usage(worker_ctx) == outcome(recorded=1, reported=1)
        last = await settled(engine, world.subscription_id, start, now)
        assert last == await period_sum(engine, world.subscription_id, start, now) > calls


async def test_windows_recorded_through_the_closing_day_cover_the_period_unless_it_may_end_early(
    engine: AsyncEngine,
) -> None:
    async def covers(last: datetime | None, end: datetime, *, may_end_early: bool) -> bool:
        moment = DateTime(timezone=True)
        clause = covers_period(
            literal(last, moment), literal(end, moment), may_end_early=literal(may_end_early)
        )
        async with engine.connect() as connection:
            return bool((await connection.execute(select(clause))).scalar_one())

    midnight = datetime(2026, 11, 20, tzinfo=UTC)
    renewal = midnight + timedelta(hours=14, minutes=37)
    # The closing day's whole window is stamped 23:59:59, in the next period.
    assert await covers(midnight, renewal, may_end_early=False)
    assert not await covers(midnight - DAY, renewal, may_end_early=False)
    # A period ending at midnight bills the day before it.
    assert await covers(midnight, midnight, may_end_early=False)
    assert not await covers(midnight - DAY, midnight, may_end_early=False)
    # A window that ended partway through a day: the next one ends at that day's midnight.
    assert await covers(
        midnight + timedelta(hours=10), midnight + DAY - timedelta(seconds=1), may_end_early=False
    )
    assert not await covers(midnight + timedelta(hours=10), midnight + DAY, may_end_early=False)
    # Ending with the period: a partial window up to the end is billed in it.
    assert not await covers(midnight, renewal, may_end_early=True)
    assert await covers(renewal, renewal, may_end_early=True)
    assert not await covers(None, renewal, may_end_early=False)


async def test_a_renewal_draft_sends_a_window_of_its_period_the_usage_job_left_unsent(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api({}, fail_calls={2})
        world = await pay_per_use(engine, days_ago=3)
        assert await aggregate_usage(worker_ctx) == outcome(recorded=3, reported=2, stripe_failures=1)
        end = day_start(datetime.now(UTC).date())
        period = (int((end - timedelta(days=30)).timestamp()), int(end.timestamp()))
        draft = invoice_obj(world, f"in_{uuid.uuid4().hex[:8]}", "draft", amount=0, period=period)
        payload = event("invoice.created", draft, created=period[1] + 60)
        body, header = sign_webhook(payload)
        await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
        assert await process_stripe_event(worker_ctx, payload["id"]) == "processed"
    assert meter_events.call_count == 4
    assert all(r.reported_at is not None for r in await usage_windows(engine))
