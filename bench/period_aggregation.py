"""A subscription period's usage as the usage endpoint sums it, against the bare GROUP BY.

    python -m bench period_aggregation

On embedded PostgreSQL with 1,000,000 usage_records (10,000 subscriptions x 100 daily windows,
generated in PostgreSQL with INSERT ... SELECT generate_series), for the same 2,000 scattered
subscriptions and a 30-day period each:
  - ours: `SubscriptionRepository.recorded_usage` (what GET /subscriptions/{id}/usage sums), on
    one AsyncSession;
  - baseline: the bare `SELECT sum(...) ... WHERE subscription_id = $1 AND window_start in the
    period GROUP BY subscription_id`, prepared once, on one asyncpg connection.
and, for the usage worker's quota check, all 10,000 subscriptions' periods in its batches of 100:
  - ours: `UsageRepository.period_calls` (one query per batch);
  - baseline: the bare `SELECT subscription_id, sum(quantity) ... WHERE subscription_id = ANY($1)
    ... GROUP BY subscription_id` per batch, prepared once, on one asyncpg connection.
Both read the (subscription_id, window_start) unique index; rounds alternate on warm caches. The
figures are ours time / baseline time, median of the rounds (goal <= 1.25x).
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.subscriptions.repository import SubscriptionRepository
from app.usage.repository import UsageRepository
from app.usage.service import BATCH_SIZE
from bench.harness import embedded_stack
from bench.usage_ingest import seed_subscriptions

GOAL = 1.25
SUBSCRIPTIONS = 10_000
DAYS = 100
LOOKUPS = 2000
ROUNDS = 5
START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD_START = START + timedelta(days=40)
PERIOD_END = PERIOD_START + timedelta(days=30)

RECORDS_SQL = """
INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                           successful_calls, failed_calls, meter_event_identifier, report_status,
                           report_attempt, created_at)
SELECT gen_random_uuid(), s.id, $1::timestamptz + d * interval '1 day',
       $1::timestamptz + (d + 1) * interval '1 day',
       (hashtext(s.id::text) + d * 7) & 1023,
       (hashtext(s.id::text) + d * 7) & 1023, d % 5, NULL, 'unbilled', 0, now()
FROM subscriptions s, generate_series(0, $2::int - 1) d
"""

BARE_SQL = """
SELECT coalesce(sum(quantity), 0), coalesce(sum(successful_calls), 0), coalesce(sum(failed_calls), 0)
FROM usage_records
WHERE subscription_id = $1 AND window_start >= $2 AND window_start < $3
GROUP BY subscription_id
"""

BARE_BATCH_SQL = """
SELECT subscription_id, sum(quantity)
FROM usage_records
WHERE subscription_id = ANY($1::uuid[]) AND window_start >= $2 AND window_start < $3
GROUP BY subscription_id
"""


def verdict(name: str, ratio: float, detail: str) -> str:
    met = "meets" if ratio <= GOAL else "misses"
    return f"ratio {name}/bare: {ratio:.2f}x time ({met} the goal <= {GOAL:.2f}x; {detail})"


async def main() -> None:
    async with embedded_stack() as settings:
        bare_url = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(bare_url)
        await seed_subscriptions(connection, SUBSCRIPTIONS, START)
        await connection.execute(RECORDS_SQL, START, DAYS)
        await connection.execute("VACUUM ANALYZE usage_records")
        count = await connection.fetchval("SELECT count(*) FROM usage_records")
        assert count == SUBSCRIPTIONS * DAYS, count
        # A fixed, scattered sample of subscriptions.
        sample = "SELECT id FROM subscriptions ORDER BY md5(id::text) LIMIT $1"
        chosen: list[uuid.UUID] = [r[0] for r in await connection.fetch(sample, LOOKUPS)]
        explained = await connection.fetch("EXPLAIN " + BARE_SQL, chosen[0], PERIOD_START, PERIOD_END)
        plan = "\n".join(row[0] for row in explained)
        assert "uq_usage_records_subscription_window" in plan, plan
        engine = create_async_engine(settings.database_url, pool_size=2)
        bare_statement = await connection.prepare(BARE_SQL)

        async def bare() -> tuple[float, int]:
            total = 0
            started = time.perf_counter()
            for subscription_id in chosen:
                row = await bare_statement.fetchrow(subscription_id, PERIOD_START, PERIOD_END)
                total += row[0] if row else 0
            return time.perf_counter() - started, total

        async def ours(session: AsyncSession) -> tuple[float, int]:
            repo = SubscriptionRepository(session)
            total = 0
            started = time.perf_counter()
            for subscription_id in chosen:
                total += (await repo.recorded_usage(subscription_id, PERIOD_START, PERIOD_END))[0]
            return time.perf_counter() - started, total

        ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        batches = [ids[n : n + BATCH_SIZE] for n in range(0, len(ids), BATCH_SIZE)]
        bare_batch_statement = await connection.prepare(BARE_BATCH_SQL)

        async def bare_batches() -> tuple[float, int]:
            total = 0
            started = time.perf_counter()
            for batch in batches:
                rows = await bare_batch_statement.fetch(batch, PERIOD_START, PERIOD_END)
                total += sum(row[1] for row in rows)
            return time.perf_counter() - started, total

        async def ours_batches(session: AsyncSession) -> tuple[float, int]:
            repo = UsageRepository(session)
            total = 0
            started = time.perf_counter()
            for batch in batches:
                calls = await repo.period_calls([(id_, PERIOD_START, PERIOD_END) for id_ in batch])
                total += sum(calls.values())
            return time.perf_counter() - started, total

        results: list[tuple[float, float]] = []
        batch_results: list[tuple[float, float]] = []
        async with async_sessionmaker(engine)() as session:
            await ours(session)
            await bare()  # warm both
            for _ in range(ROUNDS):
                bare_time, bare_total = await bare()
                ours_time, ours_total = await ours(session)
                assert ours_total == bare_total, (ours_total, bare_total)
                results.append((bare_time, ours_time))
                bare_time, bare_total = await bare_batches()
                ours_time, ours_total = await ours_batches(session)
                assert ours_total == bare_total, (ours_total, bare_total)
                batch_results.append((bare_time, ours_time))
        await engine.dispose()
        await connection.close()
    for name, timed, periods in (
        ("recorded_usage", results, LOOKUPS),
        ("period_calls", batch_results, SUBSCRIPTIONS),
    ):
        bare_rate = statistics.median(periods / b for b, _ in timed)
        ours_rate = statistics.median(periods / o for _, o in timed)
        ratio = statistics.median(o / b for b, o in timed)
        print(f"{'bare GROUP BY (asyncpg)':<28} {bare_rate:9.0f} periods/s")
        print(f"{name:<28} {ours_rate:9.0f} periods/s")
        detail = f"median of {ROUNDS} rounds, {periods} periods of 30 days over {count} rows"
        print(verdict(name, ratio, detail))
