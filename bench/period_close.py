"""The period close: what renewal invoicing with usage runs for 20,000 subscriptions over
10,000,000 usage rows, against the bare GROUP BY of the same period's rows.

    python -m bench period_close [--subscriptions N] [--rounds R]

On embedded PostgreSQL: N (default 20,000) live pay-per-use subscriptions with 500 daily windows
each (10,000,000 usage_records at the default, every one already reported to Stripe, seeded with
INSERT ... SELECT generate_series), all of them closing the same 30-day period, an hour ago. Ours
is the code that runs because that period closed, timed end to end:
  - the usage job's pass, run as the worker runs it (`UsageService.aggregate()`, no stand-in),
    with its period-close pass: per batch of BATCH_SIZE subscriptions, read in parts of
    SETTLE_BATCH, one transaction per part that takes the settlement lock alone and reads the
    part with one statement (`UsageRepository.settle_ready`: per subscription one range of the
    windows' key from the day before its period, giving its period's calls and where its
    windows stop, and one probe each of its unsent windows and its settlement) that also
    settles, in usage_period_settlements, every period it found ready, and returns only the
    subscriptions with anything left to do (here none: every ended day is in and sent, and no
    plan has a call limit, so the metering service, Stripe and the call-limit check are never
    asked; the statement still decides it for each). The settlements of the previous round are truncated
    first, untimed, so every round settles all N periods;
  - then every renewal draft's confirmation, as `invoice.created` makes it: the settlement comes
    joined to the subscription row the handler loads and locks anyway (`draft_subscription`),
    which decides in the same statement whether it still holds. That statement's work for all
    N drafts (the subscription row and the settlement's key, one probe each, and the decision)
    is timed as one statement over the N drafts; the per-draft round trip and transaction are
    the handler's own, with or without usage, and are not counted. A sample of drafts also goes
    through `draft_subscription` itself, each in its own transaction (untimed), and must agree.
Excluded: mirroring the invoice from Stripe's payload (the same for a draft with or without
usage), and the overage line (`bill_overage`), which moves to the Stripe meter: after that a
settled draft has no overage work. Also printed, not in the figure: the same pass once every
period is settled (what the pass costs without settling anything).
The baseline is the bare `SELECT subscription_id, sum(quantity) FROM usage_records WHERE
window_start in the period GROUP BY subscription_id`, once, on one asyncpg connection. The calls
the close settled, and those the drafts confirm, must equal the baseline's. The seed is
checkpointed before any timing, and the process keeps the garbage collector off what it loaded
before the rounds, as the worker does once started. Rounds alternate on warm caches; the figure
is ours time / bare time, median of the rounds (goal <= 3x).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from sqlalchemy import Uuid, and_, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app import clock
from app.config import Settings
from app.db.statements import DriverStatement
from app.models import Subscription, UsagePeriodSettlement
from app.resources import freeze_startup_heap
from app.stripe import StripeGateway
from app.usage.repository import (
    _BEFORE_ANY_ID,
    _METERED_SQL,
    ENDED_LOOKBACK,
    UsageRepository,
    _settled_calls,
)
from app.usage.service import SETTLE_BATCH, UsageService
from app.usage.windows import day_start
from app.worker.settings import WorkerSettings
from bench.harness import Figure, embedded_stack
from bench.usage_ingest import seed_subscriptions

GOAL = 3.0
SUBSCRIPTIONS = 20_000
DAYS = 500
SEED_CHUNK = 2_000  # subscriptions per INSERT ... SELECT (a million rows)
ROUNDS = 3
START = datetime(2025, 1, 1, tzinfo=UTC)
PERIOD_END = START + timedelta(days=DAYS)
PERIOD_START = PERIOD_END - timedelta(days=30)
CLOSED_AT = PERIOD_END + timedelta(hours=1)  # when the close runs

RECORDS_SQL = """
INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                           successful_calls, failed_calls, meter_event_identifier, report_status,
                           report_attempt, reported_at, created_at)
SELECT gen_random_uuid(), s.id, $1::timestamptz + d * interval '1 day',
       $1::timestamptz + (d + 1) * interval '1 day',
       (hashtext(s.id::text)::bigint + d * 7) & 1023, (hashtext(s.id::text)::bigint + d * 7) & 1023, d % 5,
       'usage:' || s.id || ':' || to_char($1::timestamptz + d * interval '1 day', 'YYYYMMDD'),
       'accepted', 0, $1::timestamptz + (d + 1) * interval '1 day', now()
FROM (SELECT id FROM subscriptions ORDER BY id OFFSET $3 LIMIT $4) s, generate_series(0, $2::int - 1) d
"""

# What `draft_subscription` reads for one draft, for all drafts at once: the subscription row
# and its period's settlement, with the settlement's calls decided in the statement as there.
CONFIRM = DriverStatement.compile(
    select(Subscription.id, _settled_calls(PERIOD_END))
    .outerjoin(
        UsagePeriodSettlement,
        and_(
            UsagePeriodSettlement.subscription_id == Subscription.id,
            UsagePeriodSettlement.period_start == PERIOD_START,
            UsagePeriodSettlement.period_end == PERIOD_END,
        ),
    )
    .where(Subscription.id == any_(bindparam("ids", None, type_=ARRAY(Uuid()))))
)
SAMPLE = 200  # drafts that also go through `draft_subscription`, one transaction each

BARE_SQL = """
SELECT subscription_id, sum(quantity)
FROM usage_records
WHERE window_start >= $1 AND window_start < $2
GROUP BY subscription_id
"""


async def seed(connection: asyncpg.Connection, subscriptions: int) -> int:
    await seed_subscriptions(connection, subscriptions, START)
    await connection.execute(
        "UPDATE subscriptions SET current_period_start = $1, current_period_end = $2",
        PERIOD_START,
        PERIOD_END,
    )
    for offset in range(0, subscriptions, SEED_CHUNK):
        await connection.execute(RECORDS_SQL, START, DAYS, offset, SEED_CHUNK)
        print(f"  seeded {min(offset + SEED_CHUNK, subscriptions):,} subscriptions' windows", flush=True)
    await connection.execute("VACUUM ANALYZE")
    return int(await connection.fetchval("SELECT count(*) FROM usage_records"))


async def usage_job(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, subscriptions: int, *, settles: int
) -> float:
    """The usage job's pass (its period-close pass included): seconds."""
    async with httpx.AsyncClient() as http:
        usage = UsageService(sessionmaker, StripeGateway(settings), settings, http)
        started = time.perf_counter()
        run = await usage.aggregate()
        elapsed = time.perf_counter() - started
    assert run.subscriptions == subscriptions, run
    # Nothing to record or send: neither the metering service nor Stripe is asked.
    assert (run.fetched, run.recorded, run.reported, run.stripe_failures) == (0, 0, 0, 0), run
    assert not run.unavailable, run
    assert run.settled == settles, run
    return elapsed


async def confirm_drafts(connection: asyncpg.Connection, ids: list[uuid.UUID]) -> tuple[float, int]:
    """Every renewal draft's confirmation (see the module's docstring): seconds, and the calls
    the drafts found settled."""
    started = time.perf_counter()
    rows = await connection.fetch(CONFIRM.sql, *CONFIRM.args({"ids": ids}))
    calls = 0
    for row in rows:
        assert row[1] is not None, row[0]  # settled: the usage job is not run again
        calls += int(row[1])
    elapsed = time.perf_counter() - started
    assert len(rows) == len(ids)
    return elapsed, calls


async def confirm_sample(sessionmaker: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]) -> int:
    """A sample of drafts through `draft_subscription`, as `invoice.created` calls it: their calls."""
    total = 0
    for subscription_id in ids:
        async with sessionmaker.begin() as session:
            found = await UsageRepository(session).draft_subscription(
                subscription_id, PERIOD_START, PERIOD_END
            )
            subscription, calls = found
            assert subscription is not None, subscription_id
            assert calls is not None, subscription_id  # settled: the usage job is not run again
            total += calls
    return total


async def settled_total(connection: asyncpg.Connection) -> int:
    return int(
        await connection.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM usage_period_settlements"
            " WHERE period_start = $1 AND period_end = $2",
            PERIOD_START,
            PERIOD_END,
        )
    )


async def bare(connection: asyncpg.Connection) -> tuple[float, int]:
    started = time.perf_counter()
    rows = await connection.fetch(BARE_SQL, PERIOD_START, PERIOD_END)
    return time.perf_counter() - started, sum(int(row[1]) for row in rows)


async def main() -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench period_close")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--subscriptions", type=int, default=SUBSCRIPTIONS)
    options = parser.parse_args()
    rounds, subscriptions = options.rounds, options.subscriptions
    async with embedded_stack() as settings:
        bare_url = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(bare_url)
        seeding = time.perf_counter()
        count = await seed(connection, subscriptions)
        assert count == subscriptions * DAYS, count
        print(f"  {count:,} usage rows in {time.perf_counter() - seeding:.0f}s", flush=True)
        # The seed's dirty pages are written now, not during whichever timed side comes first.
        await connection.execute("CHECKPOINT")
        ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        batch_sql = _METERED_SQL[False, True, True]
        batch_args = batch_sql.args(
            {
                "after": _BEFORE_ANY_ID,
                "limit": SETTLE_BATCH,
                "ended_since": CLOSED_AT - ENDED_LOOKBACK,
                "settled_at": CLOSED_AT,
                "quiet_from": day_start(CLOSED_AT.date()),  # the usage job's: every ended day in
            }
        )
        for name, sql, args in (
            ("bare GROUP BY", BARE_SQL, (PERIOD_START, PERIOD_END)),
            (
                f"the usage job's read of a part (the first {SETTLE_BATCH:,})",
                batch_sql.sql,
                tuple(batch_args),
            ),
            (f"the drafts' confirmations ({len(ids):,})", CONFIRM.sql, tuple(CONFIRM.args({"ids": ids}))),
        ):
            explained = connection.transaction()
            await explained.start()
            plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            await explained.rollback()
            print(f"  EXPLAIN {name}:\n    " + "\n    ".join(row[0] for row in plan), flush=True)
        engine = create_async_engine(settings.database_url, pool_size=WorkerSettings.max_jobs)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        freeze_startup_heap()  # as the worker does once started
        timings: list[tuple[float, float, float]] = []
        settled_job = 0.0
        with clock.use(clock.ManualClock(CLOSED_AT)):
            await bare(connection)  # warm the table's pages
            for _ in range(rounds):
                await connection.execute("TRUNCATE usage_period_settlements")
                bare_time, bare_calls = await bare(connection)
                job = await usage_job(sessionmaker, settings, len(ids), settles=len(ids))
                assert await settled_total(connection) == bare_calls
                drafts, draft_calls = await confirm_drafts(connection, ids)
                assert draft_calls == bare_calls, (draft_calls, bare_calls)
                timings.append((bare_time, job, drafts))
                print(
                    f"  bare {bare_time:.2f}s, usage job with period close {job:.2f}s, drafts {drafts:.2f}s",
                    flush=True,
                )
            sample = ids[:: max(len(ids) // SAMPLE, 1)]
            sample_calls = await confirm_sample(sessionmaker, sample)
            expected = await connection.fetchval(
                "SELECT sum(quantity) FROM usage_records WHERE subscription_id = ANY($1)"
                " AND window_start >= $2 AND window_start < $3",
                sample,
                PERIOD_START,
                PERIOD_END,
            )
            assert sample_calls == expected, (sample_calls, expected)
            # The same pass once every period is settled: the usage job's own share of the close.
            settled_job = await usage_job(sessionmaker, settings, len(ids), settles=0)
        await engine.dispose()
        await connection.close()
    bare_time = statistics.median(b for b, _, _ in timings)
    job = statistics.median(j for _, j, _ in timings)
    drafts = statistics.median(d for _, _, d in timings)
    ratio = statistics.median((j + d) / b for b, j, d in timings)
    print(f"{'bare GROUP BY (asyncpg)':<36} {bare_time:8.2f} s")
    print(f"{'usage job with period-close pass':<36} {job:8.2f} s")
    print(f"{'  of which the job, all settled':<36} {settled_job:8.2f} s (one run, not in the figure)")
    print(f"{'renewal drafts (confirmations)':<36} {drafts:8.2f} s")
    met = "meets" if ratio <= GOAL else "misses"
    detail = f"median of {rounds} rounds, {len(ids):,} subscriptions, {count:,} rows"
    print(f"ratio period close/bare: {ratio:.2f}x time ({met} the goal <= {GOAL:g}x; {detail})")
    return [Figure("period close / bare GROUP BY", ratio, GOAL, at_least=False, detail=detail)]
