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

Then the same reads from a second database of the same server holding 10x the rows (100,000
subscriptions, 10,000,000 usage_records): the same number of scattered single sums, and all
100,000 periods in the worker's batches; each keyed read (a single sum, a batch's period) costs
within 1.2x of its cost at 1x (rounds alternate between the two tables), and EXPLAIN of the
worker's batched sum at 10x shows the window index.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.subscriptions.repository import SubscriptionRepository
from app.usage.repository import _PERIOD_CALLS, UsageRepository
from app.usage.service import BATCH_SIZE
from bench.harness import Figure, bulk_insert, embedded_stack, second_database
from bench.usage_ingest import seed_subscriptions

GOAL = 1.25
GROWTH, GROWTH_GOAL = 10, 1.2  # the same reads from a table of 10x the rows: within 1.2x the cost
INDEX = "uq_usage_records_subscription_window"
SUBSCRIPTIONS = 10_000
DAYS = 100
LOOKUPS = 2000
ROUNDS = 7
WARMUP_ROUNDS = 2
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


@dataclass
class Table:
    """One database's usage_records, the periods read from it, and the timed runs over it."""

    connection: asyncpg.Connection
    session: AsyncSession
    rows: int
    chosen: list[uuid.UUID]
    batches: list[list[uuid.UUID]]
    bare_statement: Any = None
    bare_batch_statement: Any = None

    async def bare(self) -> tuple[float, int]:
        total = 0
        started = time.perf_counter()
        for subscription_id in self.chosen:
            row = await self.bare_statement.fetchrow(subscription_id, PERIOD_START, PERIOD_END)
            total += row[0] if row else 0
        return time.perf_counter() - started, total

    async def ours(self) -> tuple[float, int]:
        repo = SubscriptionRepository(self.session)
        total = 0
        started = time.perf_counter()
        for subscription_id in self.chosen:
            total += (await repo.recorded_usage(subscription_id, PERIOD_START, PERIOD_END))[0]
        return time.perf_counter() - started, total

    async def bare_batches(self) -> tuple[float, int]:
        total = 0
        started = time.perf_counter()
        for batch in self.batches:
            rows = await self.bare_batch_statement.fetch(batch, PERIOD_START, PERIOD_END)
            total += sum(row[1] for row in rows)
        return time.perf_counter() - started, total

    async def ours_batches(self) -> tuple[float, int]:
        repo = UsageRepository(self.session)
        total = 0
        started = time.perf_counter()
        for batch in self.batches:
            calls = await repo.period_calls([(id_, PERIOD_START, PERIOD_END) for id_ in batch])
            total += sum(calls.values())
        return time.perf_counter() - started, total

    async def plan(self) -> str:
        ids = self.batches[0]
        explained = await self.connection.fetch(
            "EXPLAIN " + _PERIOD_CALLS, ids, [PERIOD_START] * len(ids), [PERIOD_END] * len(ids)
        )
        return "\n".join(row[0] for row in explained)


async def seed(connection: asyncpg.Connection, subscriptions: int) -> int:
    """`subscriptions` subscriptions with DAYS daily windows each, generated in PostgreSQL."""
    started = time.perf_counter()
    await seed_subscriptions(connection, subscriptions, START)
    await bulk_insert(connection, "usage_records", RECORDS_SQL, START, DAYS)
    await connection.execute("VACUUM ANALYZE")
    count = int(await connection.fetchval("SELECT count(*) FROM usage_records"))
    assert count == subscriptions * DAYS, count
    print(f"seeded {count:,} usage rows in {time.perf_counter() - started:.0f}s", flush=True)
    return count


@asynccontextmanager
async def table(database_url: str, subscriptions: int) -> AsyncIterator[Table]:
    """The table seeded with `subscriptions` subscriptions; LOOKUPS of them, scattered, for the
    single sums, and all of them, by id, for the worker's batches (as the worker reads them)."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    engine = create_async_engine(database_url, pool_size=2)
    try:
        rows = await seed(connection, subscriptions)
        sample = "SELECT id FROM subscriptions ORDER BY md5(id::text) LIMIT $1"
        chosen: list[uuid.UUID] = [r[0] for r in await connection.fetch(sample, LOOKUPS)]
        ids = [r[0] for r in await connection.fetch("SELECT id FROM subscriptions ORDER BY id")]
        explained = await connection.fetch("EXPLAIN " + BARE_SQL, chosen[0], PERIOD_START, PERIOD_END)
        plan = "\n".join(row[0] for row in explained)
        assert INDEX in plan, plan
        async with async_sessionmaker(engine)() as session:
            yield Table(
                connection,
                session,
                rows,
                chosen,
                [ids[n : n + BATCH_SIZE] for n in range(0, len(ids), BATCH_SIZE)],
                await connection.prepare(BARE_SQL),
                await connection.prepare(BARE_BATCH_SQL),
            )
    finally:
        await engine.dispose()
        await connection.close()


async def main() -> list[Figure]:
    async with embedded_stack() as settings:
        url_10x = await second_database(settings.database_url, "bench_10x")
        async with (
            table(settings.database_url, SUBSCRIPTIONS) as at_1x,
            table(url_10x, SUBSCRIPTIONS * GROWTH) as at_10x,
        ):
            # Warm-up rounds first: one pass leaves most of the 10x table's index out of memory, so
            # the first measured rounds read it from disk and the figure flipped run to run.
            for _ in range(WARMUP_ROUNDS):
                for run in (
                    at_1x.ours,
                    at_1x.bare,
                    at_1x.ours_batches,
                    at_1x.bare_batches,
                    at_10x.ours,
                    at_10x.bare,
                    at_10x.ours_batches,
                    at_10x.bare_batches,
                ):
                    await run()
            results: list[tuple[float, float]] = []
            batch_results: list[tuple[float, float]] = []
            growth: list[tuple[float, float]] = []  # (recorded_usage, period_calls) at 10x / at 1x
            for _ in range(ROUNDS):
                bare_time, bare_total = await at_1x.bare()
                ours_time, ours_total = await at_1x.ours()
                assert ours_total == bare_total, (ours_total, bare_total)
                results.append((bare_time, ours_time))
                bare_time, bare_total = await at_1x.bare_batches()
                batch_time, ours_total = await at_1x.ours_batches()
                assert ours_total == bare_total, (ours_total, bare_total)
                batch_results.append((bare_time, batch_time))
                # From the table ten times as large: the same number of scattered single sums, and
                # every subscription's period in the worker's batches (cost per period compared).
                ours_10x, total_10x = await at_10x.ours()
                assert total_10x == (await at_10x.bare())[1]
                batch_10x, total_10x = await at_10x.ours_batches()
                assert total_10x == (await at_10x.bare_batches())[1]
                periods_10x = sum(len(batch) for batch in at_10x.batches)
                growth.append(
                    (ours_10x / ours_time, (batch_10x / periods_10x) / (batch_time / SUBSCRIPTIONS))
                )
            plan = await at_10x.plan()
            count, count_10x = at_1x.rows, at_10x.rows
    figures: list[Figure] = []
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
        figures.append(
            Figure(f"period sum {name} / bare GROUP BY", ratio, GOAL, at_least=False, detail=detail)
        )
    for index, name in enumerate(("recorded_usage", "period_calls")):
        rounds = [g[index] for g in growth]
        cost = statistics.median(rounds)
        print(
            f"{name} at {count_10x:,} rows: {cost:.2f}x its cost at {count:,} (goal <= {GROWTH_GOAL}; "
            f"rounds {', '.join(f'{r:.2f}' for r in rounds)})"
        )
        figures.append(
            Figure(
                f"period sum {name} at 10x rows / at 1x",
                cost,
                GROWTH_GOAL,
                at_least=False,
                detail=f"{count:,} -> {count_10x:,} rows",
            )
        )
    print(f"EXPLAIN period_calls at 10x:\n{plan}")
    figures.append(
        Figure("period sums: EXPLAIN at 10x uses the window index", float(INDEX in plan), 1, at_least=True)
    )
    return figures
