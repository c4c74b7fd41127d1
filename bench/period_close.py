"""The period close: what renewal invoicing with usage runs for 20,000 subscriptions over
10,000,000 usage rows, against the bare GROUP BY of the same period's rows.

    python -m bench period_close

On embedded PostgreSQL: 20,000 live pay-per-use subscriptions with 500 daily windows each
(10,000,000 usage_records, every one already reported to Stripe, seeded in PostgreSQL with
INSERT ... SELECT generate_series), all of them closing the same 30-day period, an hour ago. Ours
is the code that runs at that period's end, timed end to end:
  - the usage job's pass, run as the worker runs it (`UsageService.aggregate()`, no stand-in):
    per batch of BATCH_SIZE subscriptions, `metered_subscriptions` (with each one's last window),
    the windows to record (none: every ended day is in, so the metering service is never asked),
    `claim_pending` (none left to send, so Stripe is never called) and the call-limit check (no
    call-limited plan here);
  - then each subscription's renewal draft, as `invoice.created` handles it after mirroring the
    invoice, `max_jobs` at a time, each in its own session and transaction: the subscription row
    (`FOR KEY SHARE`), `settled_period_calls` (one statement: the last window, any unsent window
    of the period, the period's calls; asserted settled, so the usage job is not run again) and
    `bill_overage` (the plan version; no overage on this plan). Mirroring the invoice from
    Stripe's payload is not included: it is the same for a draft with or without usage.
The baseline is the bare `SELECT subscription_id, sum(quantity) FROM usage_records WHERE
window_start in the period GROUP BY subscription_id`, once, on one asyncpg connection. The calls
the renewals read must equal the baseline's. Rounds alternate on warm caches; the figure is ours
time / bare time, median of the rounds (goal <= 3x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app import clock
from app.config import Settings
from app.entitlements.overage import bill_overage
from app.models import Invoice, Subscription
from app.stripe import StripeGateway
from app.usage.repository import _PERIOD_SETTLED as PERIOD_SETTLED_SQL
from app.usage.repository import UsageRepository
from app.usage.service import UsageService
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

# claim_pending's statement for one subscription, as SQLAlchemy sends it (for EXPLAIN).
CLAIM_SQL = """
SELECT r.id FROM usage_records r JOIN subscriptions s ON s.id = r.subscription_id
JOIN consumers c ON c.id = s.consumer_id
WHERE r.subscription_id = $1 AND r.meter_event_identifier IS NOT NULL AND r.reported_at IS NULL
  AND r.report_status IN ('pending', 'unbilled') AND c.stripe_customer_id IS NOT NULL
ORDER BY r.window_start FOR UPDATE OF r SKIP LOCKED
"""

# metered_subscriptions' `last_window_end` subquery for one subscription: the key read backwards
# (windows of a subscription never overlap, so the one starting last ends last).
LAST_WINDOW_SQL = """
SELECT window_end FROM usage_records WHERE subscription_id = $1 ORDER BY window_start DESC LIMIT 1
"""

BARE_SQL = """
SELECT subscription_id, sum(quantity)
FROM usage_records
WHERE window_start >= $1 AND window_start < $2
GROUP BY subscription_id
"""


async def seed(connection: asyncpg.Connection) -> int:
    await seed_subscriptions(connection, SUBSCRIPTIONS, START)
    await connection.execute(
        "UPDATE subscriptions SET current_period_start = $1, current_period_end = $2",
        PERIOD_START,
        PERIOD_END,
    )
    for offset in range(0, SUBSCRIPTIONS, SEED_CHUNK):
        await connection.execute(RECORDS_SQL, START, DAYS, offset, SEED_CHUNK)
        print(f"  seeded {offset + SEED_CHUNK:,} subscriptions' windows", flush=True)
    await connection.execute("VACUUM ANALYZE")
    return int(await connection.fetchval("SELECT count(*) FROM usage_records"))


async def close_period(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, ids: list[uuid.UUID]
) -> tuple[float, float, int]:
    """The usage job's pass, then every renewal draft's usage check: (job seconds, renewal
    seconds, calls the renewals found in the period)."""
    async with httpx.AsyncClient() as http:
        usage = UsageService(sessionmaker, StripeGateway(settings), settings, http)
        started = time.perf_counter()
        run = await usage.aggregate()
        job = time.perf_counter() - started
    assert run.subscriptions == len(ids), run
    # Nothing to record or send: neither the metering service nor Stripe is asked.
    assert (run.fetched, run.recorded, run.reported, run.stripe_failures) == (0, 0, 0, 0), run
    assert not run.unavailable, run

    gate = asyncio.Semaphore(WorkerSettings.max_jobs)
    stripe = StripeGateway(settings)

    async def renewal(subscription_id: uuid.UUID) -> int:
        draft = Invoice(status="draft", period_start=PERIOD_START, period_end=PERIOD_END)
        async with gate, sessionmaker.begin() as session:
            lock = {"key_share": True}
            subscription = await session.get(Subscription, subscription_id, with_for_update=lock)
            assert subscription is not None
            repo = UsageRepository(session)
            calls = await repo.settled_period_calls(subscription, PERIOD_START, PERIOD_END)
            assert calls is not None, subscription_id  # settled: the usage job is not run again
            await bill_overage(session, stripe, draft, subscription, calls=calls)
            return calls

    started = time.perf_counter()
    renewal_calls = sum(await asyncio.gather(*(renewal(i) for i in ids)))
    return job, time.perf_counter() - started, renewal_calls


async def bare(connection: asyncpg.Connection) -> tuple[float, int]:
    started = time.perf_counter()
    rows = await connection.fetch(BARE_SQL, PERIOD_START, PERIOD_END)
    return time.perf_counter() - started, sum(int(row[1]) for row in rows)


async def main() -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench period_close")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    rounds = parser.parse_args().rounds
    async with embedded_stack() as settings:
        bare_url = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(bare_url)
        seeding = time.perf_counter()
        count = await seed(connection)
        assert count == SUBSCRIPTIONS * DAYS, count
        print(f"  {count:,} usage rows in {time.perf_counter() - seeding:.0f}s", flush=True)
        ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        sample = ids[len(ids) // 2]
        for name, sql, args in (
            ("bare GROUP BY", BARE_SQL, (PERIOD_START, PERIOD_END)),
            ("claim_pending (one subscription)", CLAIM_SQL, (sample,)),
            ("metered_subscriptions' last window (one subscription)", LAST_WINDOW_SQL, (sample,)),
            ("settled_period_calls", PERIOD_SETTLED_SQL, (sample, PERIOD_START, PERIOD_END)),
        ):
            plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            print(f"  EXPLAIN {name}:\n    " + "\n    ".join(row[0] for row in plan), flush=True)
        engine = create_async_engine(settings.database_url, pool_size=WorkerSettings.max_jobs)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        timings: list[tuple[float, float, float]] = []
        with clock.use(clock.ManualClock(PERIOD_END + timedelta(hours=1))):
            await bare(connection)  # warm the table's pages
            for _ in range(rounds):
                bare_time, bare_calls = await bare(connection)
                cron, renewals, renewal_calls = await close_period(sessionmaker, settings, ids)
                assert renewal_calls == bare_calls, (renewal_calls, bare_calls)
                timings.append((bare_time, cron, renewals))
                print(f"  bare {bare_time:.2f}s, usage job {cron:.2f}s, renewals {renewals:.2f}s", flush=True)
        await engine.dispose()
        await connection.close()
    bare_time = statistics.median(b for b, _, _ in timings)
    cron = statistics.median(c for _, c, _ in timings)
    renewals = statistics.median(r for _, _, r in timings)
    ratio = statistics.median((c + r) / b for b, c, r in timings)
    print(f"{'bare GROUP BY (asyncpg)':<28} {bare_time:8.2f} s")
    print(f"{'usage job pass':<28} {cron:8.2f} s")
    print(f"{'renewal drafts (usage)':<28} {renewals:8.2f} s")
    met = "meets" if ratio <= GOAL else "misses"
    detail = f"median of {rounds} rounds, {SUBSCRIPTIONS:,} subscriptions, {count:,} rows"
    print(f"ratio period close/bare: {ratio:.2f}x time ({met} the goal <= {GOAL:g}x; {detail})")
    return [Figure("period close / bare GROUP BY", ratio, GOAL, at_least=False, detail=detail)]
