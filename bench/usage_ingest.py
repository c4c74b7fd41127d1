"""Usage ingest of 100k windows through the worker's write path, against a bare batched insert.

    python -m bench usage_ingest

On embedded PostgreSQL, 4,000 pay-per-use subscriptions get 25 daily windows each (100,000
rows), written in the usage worker's batches (100 subscriptions per batch, one transaction
each):
  - ours: `UsageRepository.insert_records` in a `sessionmaker.begin()` session, as the worker
    calls it (idempotent: conflicts are skipped, the new ids come back);
  - baseline: the same rows, same batches, as one bare `INSERT ... SELECT FROM unnest(...)` per
    batch over asyncpg (no conflict handling, nothing returned).
The table is emptied before each pass; rounds alternate so outside load hits both alike. The
figure is ours rows/s / baseline rows/s, median of the rounds (goal >= 0.9x).

Then 10x: 40,000 subscriptions' 1,000,000 windows through the same path into one table (in
chunks of the 1x run's size, each built before the clock starts): the cost per row stays
within 1.2x of the 1x run's median.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.usage.repository import UsageRepository
from app.usage.service import BATCH_SIZE
from app.usage.windows import meter_event_identifier
from bench.harness import MORE_CONSUMERS_SQL, Figure, embedded_stack

GOAL = 0.90
SUBSCRIPTIONS = 4000
DAYS = 25
ROUNDS = 5
START = datetime(2026, 1, 1, tzinfo=UTC)

SEED_SQL = [
    "INSERT INTO apis (api_id, creator_id, created_at) VALUES ('bench-api', 'bench-creator', now())",
    """
    INSERT INTO api_pricing_plans (id, api_id, name, type, features, is_active, current_version,
                                   created_at, updated_at)
    VALUES ('00000000-0000-0000-0000-000000000001', 'bench-api', 'Metered', 'pay_per_use', '{}',
            true, 1, now(), now())
    """,
    """
    INSERT INTO api_pricing_plan_versions (id, plan_id, version, currency, price_per_call, created_at)
    VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 1, 'usd', 0.01, now())
    """,
    """
    INSERT INTO consumers (id, user_id, email, stripe_customer_id, created_at, updated_at)
    SELECT gen_random_uuid(), 'bench-user-' || n, 'bench-user-' || n || '@example.com',
           'cus_bench' || n, now(), now()
    FROM generate_series(1, $1::int) n
    """,
    """
    INSERT INTO subscriptions (id, consumer_id, api_id, pricing_plan_id, plan_version, status,
                               started_at, cancel_at_period_end, api_key_suspended,
                               created_at, updated_at)
    SELECT gen_random_uuid(), c.id, 'bench-api', '00000000-0000-0000-0000-000000000001', 1,
           'active', $1, false, false, now(), now()
    FROM consumers c
    """,
]

GROWTH, GROWTH_GOAL = 10, 1.2
# The consumers and subscriptions of the 10x run: $1 consumers so far, $2 wanted.
GROW_SQL = [
    MORE_CONSUMERS_SQL,
    """
    INSERT INTO subscriptions (id, consumer_id, api_id, pricing_plan_id, plan_version, status,
                               started_at, cancel_at_period_end, api_key_suspended,
                               created_at, updated_at)
    SELECT gen_random_uuid(), c.id, 'bench-api', '00000000-0000-0000-0000-000000000001', 1,
           'active', $1, false, false, now(), now()
    FROM consumers c WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.consumer_id = c.id)
    """,
]

BARE_INSERT = """
INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                           successful_calls, failed_calls, meter_event_identifier, report_status,
                           report_attempt, created_at)
SELECT *, 0, now()
FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
            $6::bigint[], $7::bigint[], $8::text[], $9::text[])
"""


def windows(subscription_ids: list[uuid.UUID]) -> list[list[dict[str, Any]]]:
    """The rows the worker would build, grouped in its batches of subscriptions."""
    batches: list[list[dict[str, Any]]] = []
    for first in range(0, len(subscription_ids), BATCH_SIZE):
        rows: list[dict[str, Any]] = []
        for n, subscription_id in enumerate(subscription_ids[first : first + BATCH_SIZE]):
            for day in range(DAYS):
                start = START + timedelta(days=day)
                successful = (n * 7 + day * 13) % 500
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "subscription_id": subscription_id,
                        "window_start": start,
                        "window_end": start + timedelta(days=1),
                        "quantity": successful,
                        "successful_calls": successful,
                        "failed_calls": day % 4,
                        "meter_event_identifier": meter_event_identifier(subscription_id, start),
                        "report_status": "pending",
                    }
                )
        batches.append(rows)
    return batches


def columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    names = (
        "id",
        "subscription_id",
        "window_start",
        "window_end",
        "quantity",
        "successful_calls",
        "failed_calls",
        "meter_event_identifier",
        "report_status",
    )
    return [[row[name] for row in rows] for name in names]


async def seed_subscriptions(connection: asyncpg.Connection, count: int, start: datetime) -> None:
    """`count` live pay-per-use subscriptions with their consumers, API and plan (SEED_SQL)."""
    await connection.execute(SEED_SQL[0])
    await connection.execute(SEED_SQL[1])
    await connection.execute(SEED_SQL[2])
    await connection.execute(SEED_SQL[3], count)
    await connection.execute(SEED_SQL[4], start)


async def main() -> list[Figure]:
    async with embedded_stack() as settings:
        bare_url = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(bare_url)
        await seed_subscriptions(connection, SUBSCRIPTIONS, START)
        await connection.execute("ANALYZE")
        ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        engine = create_async_engine(settings.database_url, pool_size=2)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)

        async def ours(batches: list[list[dict[str, Any]]]) -> float:
            started = time.perf_counter()
            written = 0
            for rows in batches:
                async with sessionmaker.begin() as session:
                    written += await UsageRepository(session).insert_records(rows)
            elapsed = time.perf_counter() - started
            assert written == SUBSCRIPTIONS * DAYS, written
            # A rerun of a batch adds nothing: the path stays idempotent.
            async with sessionmaker.begin() as session:
                assert await UsageRepository(session).insert_records(batches[0]) == 0
            return elapsed

        async def bare(batches: list[list[dict[str, Any]]]) -> float:
            started = time.perf_counter()
            for rows in batches:
                async with connection.transaction():
                    await connection.execute(BARE_INSERT, *columns(rows))
            return time.perf_counter() - started

        async def ours_10x() -> float:
            """1,000,000 windows into one table, in chunks of the 1x run (built outside the clock)."""
            await connection.execute("TRUNCATE usage_records")
            await connection.execute("CHECKPOINT")
            elapsed = 0.0
            for first in range(0, len(all_ids), SUBSCRIPTIONS):
                chunk = windows(all_ids[first : first + SUBSCRIPTIONS])
                started = time.perf_counter()
                for rows in chunk:
                    async with sessionmaker.begin() as session:
                        await UsageRepository(session).insert_records(rows)
                elapsed += time.perf_counter() - started
            assert await connection.fetchval("SELECT count(*) FROM usage_records") == len(all_ids) * DAYS
            return elapsed

        results: list[tuple[float, float]] = []
        for _ in range(ROUNDS):
            timed: list[float] = []
            for run in (bare, ours):
                await connection.execute("TRUNCATE usage_records")
                await connection.execute("CHECKPOINT")
                timed.append(await run(windows(ids)))
            results.append((timed[0], timed[1]))
        await connection.execute(GROW_SQL[0], SUBSCRIPTIONS, SUBSCRIPTIONS * GROWTH)
        await connection.execute(GROW_SQL[1], START)
        await connection.execute("ANALYZE")
        all_ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        growth_seconds = await ours_10x()
        await engine.dispose()
        await connection.close()
    rows = SUBSCRIPTIONS * DAYS
    bare_rate = statistics.median(rows / b for b, _ in results)
    ours_rate = statistics.median(rows / o for _, o in results)
    ratio = statistics.median(b / o for b, o in results)
    print(f"{'bare INSERT ... unnest':<28} {bare_rate:9.0f} rows/s")
    print(f"{'UsageRepository.insert':<28} {ours_rate:9.0f} rows/s")
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"ratio ingest/bare: {ratio:.2f}x ({verdict} the goal >= {GOAL:.2f}x; median of {ROUNDS} rounds)")
    rate_10x = rows * GROWTH / growth_seconds
    growth = ours_rate / rate_10x  # cost per row at 10x / at 1x
    print(
        f"{'UsageRepository.insert, 10x':<28} {rate_10x:9.0f} rows/s ({rows * GROWTH:,} windows): "
        f"cost per row {growth:.2f}x that of {rows:,} (goal <= {GROWTH_GOAL})"
    )
    return [
        Figure("usage ingest / bare INSERT ... unnest", ratio, GOAL, at_least=True, detail=f"{rows:,} rows"),
        Figure(
            "usage ingest of 10x windows: cost per row / at 1x",
            growth,
            GROWTH_GOAL,
            at_least=False,
            detail=f"{rows:,} -> {rows * GROWTH:,} windows",
        ),
    ]
