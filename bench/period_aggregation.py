"""A subscription period's usage as the usage endpoint and the usage worker sum it, against the
bare GROUP BY, and the same reads from a table of 10x the rows.

    python -m bench period_aggregation

On embedded PostgreSQL with 1,000,000 usage_records (10,000 subscriptions x 100 daily windows,
generated in PostgreSQL with INSERT ... SELECT generate_series), for the same 2,000 scattered
subscriptions and a 30-day period each:
  - ours: `SubscriptionRepository.recorded_usage` (what GET /subscriptions/{id}/usage sums), on
    one AsyncSession;
  - baseline: the bare `SELECT sum(...) ... WHERE subscription_id = $1 AND window_start in the
    period GROUP BY subscription_id`, prepared once, on one asyncpg connection.
and, for the usage worker's quota check (which subscriptions went over their plan's call limit
in their period), all 10,000 subscriptions' periods in its batches of
`app.usage.service.BATCH_SIZE` subscriptions (now 5,000, as the worker reads them by id: two
batches), one statement per batch, each subscription given the plan's limit of `CALL_LIMIT`
calls (about a third of them go over it):
  - ours: `UsageRepository.period_overruns` (one query per batch, each subscription given its
    own period and limit, here all the same: it reads them period by period, one `= ANY` scan
    per period and limit, and returns the subscriptions over their limit with their calls);
  - baseline: the bare `SELECT subscription_id, sum(quantity) ... WHERE subscription_id = ANY($1)
    ... GROUP BY subscription_id HAVING sum(quantity) > $4` per batch with the one period and
    limit, prepared once, on one asyncpg connection.
Both read the (subscription_id, window_start) unique index and return the same rows. For the
record (no goal): the same batches with a period of each subscription's own (starts spread over
30 days, as Stripe anchors a period at the subscription's creation), read one index range per
subscription, against the same bare query of one period; and `period_calls` (every
subscription's sum, no limit) against the bare GROUP BY without HAVING.

Then the same reads from a second database of the same server holding 10x the rows (100,000
subscriptions, 10,000,000 usage_records): the same number of scattered single sums, and all
100,000 periods in the worker's batches; each keyed read (a single sum, a batch's periods) costs
within 1.2x of its cost at 1x, and EXPLAIN of the worker's batched sum at 10x shows the window
index.

One pass is a fraction of a second, so the machine's other load decides a figure taken from whole
passes (the 10x/1x rounds ranged 0.68x to 1.48x in one run). The reads are therefore timed in small
units side by side: a group of 100 single sums or one batch, at 1x by ours and by the baseline,
and the same amount at 10x by ours, the 1x pair in an order that alternates (ABBA) from one unit
to the next; each figure is the median over all units and rounds of the unit's own ratio. Ours at 10x
reads its unit first, the 1x unit is read untimed by both before its pair. The server's shared
buffers (`SERVER`) hold both tables' window index, as a production server's hold its hot index:
with PostgreSQL's default of 128 MB the 10x index (about 0.7 GB) came from the OS cache page by
page, and the 10x figure measured that copy rather than the query (the same pages and rows are
read at both sizes). Two warm-up rounds over both tables come first.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.subscriptions.repository import SubscriptionRepository
from app.usage.repository import PERIOD_OVERRUNS_EACH, UsageRepository, period_calls_query
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
GROUP = 100  # single sums timed together
WARMUP_ROUNDS = 2
# Shared buffers that hold both tables' window index (about 0.7 GB at 10x), as a production
# server's would (PostgreSQL's default, 128 MB, is its minimum for small machines, not a sizing).
SERVER = {"shared_buffers": "2GB"}
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
# The quota check's question of a batch: which subscriptions went over the plan's call limit.
BARE_OVERRUNS_SQL = BARE_BATCH_SQL + "HAVING sum(quantity) > $4\n"
# The plan's call limit: about a third of the subscriptions' 30-day periods go over it (their
# sums spread from about 3,000 to 28,000 calls).
CALL_LIMIT = 20_000


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
    bare_overruns_statement: Any = None

    async def bare(self, chosen: list[uuid.UUID]) -> tuple[float, int]:
        total = 0
        started = time.perf_counter()
        for subscription_id in chosen:
            row = await self.bare_statement.fetchrow(subscription_id, PERIOD_START, PERIOD_END)
            total += row[0] if row else 0
        return time.perf_counter() - started, total

    async def ours(self, chosen: list[uuid.UUID]) -> tuple[float, int]:
        repo = SubscriptionRepository(self.session)
        total = 0
        started = time.perf_counter()
        for subscription_id in chosen:
            total += (await repo.recorded_usage(subscription_id, PERIOD_START, PERIOD_END))[0]
        return time.perf_counter() - started, total

    async def bare_batch(self, batch: list[uuid.UUID]) -> tuple[float, int]:
        started = time.perf_counter()
        rows = await self.bare_overruns_statement.fetch(batch, PERIOD_START, PERIOD_END, CALL_LIMIT)
        return time.perf_counter() - started, sum(row[1] for row in rows)

    async def ours_batch(
        self, batch: list[uuid.UUID], periods: list[tuple[uuid.UUID, datetime, datetime]] | None = None
    ) -> tuple[float, int]:
        """The batch's overruns as the worker's quota check reads them: the one period for all
        (built in the timed span, as the worker builds its own) or the `periods` given, each
        with the plan's call limit."""
        repo = UsageRepository(self.session)
        started = time.perf_counter()
        given = periods if periods is not None else [(id_, PERIOD_START, PERIOD_END) for id_ in batch]
        calls = await repo.period_overruns(given, [CALL_LIMIT] * len(given))
        return time.perf_counter() - started, sum(calls.values())

    async def bare_sums(self, batch: list[uuid.UUID]) -> tuple[float, int]:
        started = time.perf_counter()
        rows = await self.bare_batch_statement.fetch(batch, PERIOD_START, PERIOD_END)
        return time.perf_counter() - started, sum(row[1] for row in rows)

    async def ours_sums(self, batch: list[uuid.UUID]) -> tuple[float, int]:
        """Every subscription's sum of the batch (`period_calls`, what a single subscription's
        overage and reconciliation read), the one period for all."""
        repo = UsageRepository(self.session)
        started = time.perf_counter()
        calls = await repo.period_calls([(id_, PERIOD_START, PERIOD_END) for id_ in batch])
        return time.perf_counter() - started, sum(calls.values())

    async def plan(self) -> str:
        periods = [(id_, PERIOD_START, PERIOD_END) for id_ in self.batches[0]]
        statement, args = period_calls_query(periods, [CALL_LIMIT] * len(periods))
        explained = await self.connection.fetch("EXPLAIN " + statement.sql, *args)
        return "\n".join(row[0] for row in explained)


def spread_periods(batch: list[uuid.UUID]) -> list[tuple[uuid.UUID, datetime, datetime]]:
    """A period of its own for each subscription, as Stripe anchors one at its creation: starts
    spread over 30 days to the second (deterministic per subscription), 30 days long."""
    periods = []
    for id_ in batch:
        start = PERIOD_START - timedelta(seconds=id_.int % (30 * 86_400))
        periods.append((id_, start, start + timedelta(days=30)))
    return periods


async def seed(connection: asyncpg.Connection, subscriptions: int) -> int:
    """`subscriptions` subscriptions with DAYS daily windows each, generated in PostgreSQL."""
    started = time.perf_counter()
    await seed_subscriptions(connection, subscriptions, START)
    await bulk_insert(connection, "usage_records", RECORDS_SQL, START, DAYS)
    await connection.execute("VACUUM ANALYZE")
    count = int(await connection.fetchval("SELECT count(*) FROM usage_records"))
    assert count == subscriptions * DAYS, count
    index_size = await connection.fetchval("SELECT pg_size_pretty(pg_relation_size($1::regclass))", INDEX)
    print(
        f"seeded {count:,} usage rows in {time.perf_counter() - started:.0f}s (index {index_size})",
        flush=True,
    )
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
                await connection.prepare(BARE_OVERRUNS_SQL),
            )
    finally:
        await engine.dispose()
        await connection.close()


async def side_by_side(
    reverse: bool, *runs: Callable[[], Awaitable[tuple[float, int]]]
) -> tuple[float, float, float]:
    """One unit of work (bare at 1x, ours at 1x, ours at 10x, bare at 10x); returns the first
    three's seconds. Ours at 10x runs first on its unit, as the worker's pass meets it. The 1x
    unit is read untimed by both (each connection warm), then timed by ours and the bare query in
    this order or the reverse. The bare and ours totals must agree at each size."""
    bare_1x, ours_1x, ours_10x, bare_10x = runs
    ours_10x_time, total_10x = await ours_10x()
    assert total_10x == (await bare_10x())[1]
    await bare_1x()
    await ours_1x()
    if reverse:
        ours_time, ours_total = await ours_1x()
        bare_time, bare_total = await bare_1x()
    else:
        bare_time, bare_total = await bare_1x()
        ours_time, ours_total = await ours_1x()
    assert ours_total == bare_total, (ours_total, bare_total)
    return bare_time, ours_time, ours_10x_time


async def main() -> list[Figure]:
    async with embedded_stack(server=SERVER) as settings:
        url_10x = await second_database(settings.database_url, "bench_10x")
        async with (
            table(settings.database_url, SUBSCRIPTIONS) as at_1x,
            table(url_10x, SUBSCRIPTIONS * GROWTH) as at_10x,
        ):
            # Warm-up rounds first: one pass leaves most of the 10x table's index out of memory, so
            # the first measured rounds read it from disk and the figure flipped run to run.
            for _ in range(WARMUP_ROUNDS):
                for table_ in (at_1x, at_10x):
                    await table_.ours(table_.chosen)
                    await table_.bare(table_.chosen)
                    for batch in table_.batches:
                        await table_.ours_batch(batch)
                        await table_.bare_batch(batch)
            # Per unit: (bare at 1x, ours at 1x, ours at 10x) seconds for the same amount of work.
            singles: list[tuple[float, float, float]] = []
            batched: list[tuple[float, float, float]] = []
            for round_ in range(ROUNDS):
                for unit, first in enumerate(range(0, LOOKUPS, GROUP)):
                    group_1x = at_1x.chosen[first : first + GROUP]
                    group_10x = at_10x.chosen[first : first + GROUP]
                    singles.append(
                        await side_by_side(
                            (round_ + unit) % 2 == 1,
                            partial(at_1x.bare, group_1x),
                            partial(at_1x.ours, group_1x),
                            partial(at_10x.ours, group_10x),
                            partial(at_10x.bare, group_10x),
                        )
                    )
                # Every 10x batch (the worker's pass over the whole table) beside a 1x batch.
                for unit, batch_10x in enumerate(at_10x.batches):
                    batch_1x = at_1x.batches[unit % len(at_1x.batches)]
                    bare_1x, ours_1x, ours_10x = await side_by_side(
                        (round_ + unit) % 2 == 1,
                        partial(at_1x.bare_batch, batch_1x),
                        partial(at_1x.ours_batch, batch_1x),
                        partial(at_10x.ours_batch, batch_10x),
                        partial(at_10x.bare_batch, batch_10x),
                    )
                    # Per period: a batch at the end of the table may hold fewer.
                    periods_1x, periods_10x = len(batch_1x), len(batch_10x)
                    batched.append((bare_1x / periods_1x, ours_1x / periods_1x, ours_10x / periods_10x))
            # For the record (no goal): the same batches with a period of each subscription's own,
            # as most of the worker's are, against the same bare GROUP BY of one period.
            spread: list[float] = []
            for _ in range(ROUNDS):
                for batch in at_1x.batches:
                    own = spread_periods(batch)
                    assert period_calls_query(own, [CALL_LIMIT] * len(own))[0] is PERIOD_OVERRUNS_EACH
                    bare_time = (await at_1x.bare_batch(batch))[0]
                    spread.append((await at_1x.ours_batch(batch, own))[0] / bare_time)
            # For the record (no goal): every subscription's sum of a batch, against the bare
            # GROUP BY without the limit, in alternating order.
            every: list[float] = []
            for round_ in range(ROUNDS):
                for unit, batch in enumerate(at_1x.batches):
                    if (round_ + unit) % 2:
                        ours_time, ours_total = await at_1x.ours_sums(batch)
                        bare_time, bare_total = await at_1x.bare_sums(batch)
                    else:
                        bare_time, bare_total = await at_1x.bare_sums(batch)
                        ours_time, ours_total = await at_1x.ours_sums(batch)
                    assert ours_total == bare_total, (ours_total, bare_total)
                    every.append(ours_time / bare_time)
            plan = await at_10x.plan()
            count, count_10x = at_1x.rows, at_10x.rows
    figures: list[Figure] = []
    for name, units, periods in (
        ("recorded_usage", singles, f"{LOOKUPS} periods in groups of {GROUP}"),
        ("period_overruns", batched, f"{SUBSCRIPTIONS} periods in batches of {BATCH_SIZE}"),
    ):
        ratio = statistics.median(ours / bare for bare, ours, _ in units)
        rounds = ", ".join(f"{o / b:.2f}" for b, o, _ in units[:: max(len(units) // 10, 1)])
        detail = f"median of {len(units)} units, {periods} of 30 days over {count:,} rows"
        print(verdict(name, ratio, detail) + f" (a sample of units: {rounds})")
        figures.append(
            Figure(f"period sum {name} / bare GROUP BY", ratio, GOAL, at_least=False, detail=detail)
        )
    for name, units in (("recorded_usage", singles), ("period_overruns", batched)):
        cost = statistics.median(at_10x / ours for _, ours, at_10x in units)
        rounds = ", ".join(f"{t / o:.2f}" for _, o, t in units[:: max(len(units) // 10, 1)])
        print(
            f"{name} at {count_10x:,} rows: {cost:.2f}x its cost at {count:,} (goal <= {GROWTH_GOAL}; "
            f"median of {len(units)} units; a sample: {rounds})"
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
    print(
        f"period_overruns with a period of its own per subscription / bare query of one period: "
        f"{statistics.median(spread):.2f}x (for the record, no goal; median of {len(spread)} batches)"
    )
    print(
        f"period_calls of every subscription / bare GROUP BY with no limit: "
        f"{statistics.median(every):.2f}x (for the record, no goal; median of {len(every)} batches)"
    )
    print(f"EXPLAIN period_overruns at 10x:\n{plan}")
    figures.append(
        Figure("period sums: EXPLAIN at 10x uses the window index", float(INDEX in plan), 1, at_least=True)
    )
    return figures
