"""Creator analytics on one API with 1,000 consumers and 1M usage rows: our endpoints vs bare SQL.

    python -m bench.analytics [--rows 1000000] [--consumers 1000] [--repeat 15]

Starts a throwaway embedded PostgreSQL (or uses BENCH_DATABASE_URL, a database it may fill),
migrates it, generates the data in PostgreSQL (INSERT ... SELECT generate_series), then times,
in the same run, on warm caches and interleaved, the median of:
  - GET /api/v1/apis/{id}/usage and /earnings through the ASGI app (middleware, routing, JWT,
    service, SQL, JSON), called as a server calls it: one scope, the answer's bytes collected
    (an HTTP client's own cost, about 0.5 ms in process, is no part of the endpoint's);
  - the same aggregate SQL run bare over asyncpg (what the endpoint cannot avoid);
  - the smallest bare aggregate over the same rows (one GROUP BY day; one GROUP BY currency).
and prints the ratios (goal: endpoint <= 1.25x the bare SQL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jwt
from sqlalchemy import make_url
from starlette.types import ASGIApp, Message

from app.analytics.repository import EARNINGS_SQL, USAGE_SQL
from app.config import load_settings
from app.db.migrate import upgrade
from app.dev.processes import EmbeddedPostgres
from app.main import create_app
from bench.harness import MORE_CONSUMERS_SQL, Figure, bulk_insert
from tests.support.asgi import get_scope

API_ID = "bench-api"
CREATOR = "bench-creator"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"
START = datetime(2026, 1, 1, tzinfo=UTC)
GOAL = 1.25

SEED_SQL = [
    # One API, a USD and a EUR plan (half of the consumers each), another API as noise.
    "INSERT INTO apis (api_id, creator_id, created_at) VALUES ($1, $2, now()), ('bench-other', 'x', now())",
    """
    INSERT INTO api_pricing_plans (id, api_id, name, type, features, is_active, current_version,
                                   created_at, updated_at)
    SELECT ('00000000-0000-0000-0000-00000000000' || n)::uuid, $1, 'Plan ' || n, 'subscription',
           '{}', true, 1, now(), now()
    FROM generate_series(1, 2) n
    """,
    """
    INSERT INTO api_pricing_plan_versions (id, plan_id, version, currency, monthly_amount, created_at)
    SELECT gen_random_uuid(), ('00000000-0000-0000-0000-00000000000' || n)::uuid, 1,
           CASE n WHEN 1 THEN 'usd' ELSE 'eur' END, 2999, now()
    FROM generate_series(1, 2) n
    """,
    """
    INSERT INTO consumers (id, user_id, email, stripe_customer_id, created_at, updated_at)
    SELECT gen_random_uuid(), 'bench-user-' || n, 'bench-user-' || n || '@example.com',
           'cus_bench' || n, now(), now()
    FROM generate_series(1, $1::int) n
    """,
    """
    INSERT INTO subscriptions (id, consumer_id, api_id, pricing_plan_id, plan_version, status,
                               api_key_suspended, started_at, cancel_at_period_end, created_at, updated_at)
    SELECT gen_random_uuid(), c.id, $1,
           ('00000000-0000-0000-0000-00000000000' || (1 + (row_number() OVER () % 2)))::uuid,
           1, 'active', false, now(), false, now(), now()
    FROM consumers c
    """,
    # Hourly windows per subscription, as the metering pull writes them.
    """
    INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                               successful_calls, failed_calls, created_at)
    SELECT gen_random_uuid(), s.id, $2::timestamptz + make_interval(hours => h),
           $2::timestamptz + make_interval(hours => h + 1),
           (x % 97) + 3, (x % 97), 3, now()
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM subscriptions) s
    CROSS JOIN generate_series(0, $1::int - 1) h
    CROSS JOIN LATERAL (SELECT (s.i * 7919 + h * 31) AS x) r
    """,
    # A paid invoice per subscription and month, and its earning line (20% commission, half up).
    """
    INSERT INTO invoices (id, stripe_invoice_id, consumer_id, subscription_id, number, status, currency,
                          amount_due, amount_paid, subtotal, tax, total, lines, created_at, updated_at)
    SELECT gen_random_uuid(), 'in_bench_' || s.id || '_' || m, s.consumer_id, s.id, 'B-' || m, 'paid',
           v.currency, 2999, 2999, 2999, 0, 2999, '[]', $1::timestamptz + make_interval(months => m),
           now()
    FROM subscriptions s
    JOIN api_pricing_plan_versions v ON v.plan_id = s.pricing_plan_id
    CROSS JOIN generate_series(0, 2) m
    """,
    """
    INSERT INTO earnings (id, creator_id, api_id, plan_id, invoice_id, subscription_id, kind, status,
                          currency, gross_amount, commission_amount, net_amount, earned_at, created_at)
    SELECT gen_random_uuid(), $2, s.api_id, s.pricing_plan_id, i.id, s.id, 'charge',
           CASE WHEN i.created_at < $1::timestamptz + interval '2 months' THEN 'paid_out' ELSE 'pending' END,
           i.currency, i.total, round(i.total * 0.20), i.total - round(i.total * 0.20), i.created_at, now()
    FROM invoices i JOIN subscriptions s ON s.id = i.subscription_id
    """,
]

# 10x the earnings rows in the table: nine other APIs with copies of this API's lines (as
# reinstatements, which no unique index limits).
GROW_EARNINGS_SQL = [
    "INSERT INTO apis (api_id, creator_id, created_at) SELECT 'bench-grow-' || k, 'grow', now() "
    "FROM generate_series(1, $1::int - 1) k",
    """
    INSERT INTO earnings (id, creator_id, api_id, plan_id, invoice_id, subscription_id, kind, status,
                          currency, gross_amount, commission_amount, net_amount, earned_at, created_at)
    SELECT gen_random_uuid(), 'grow', 'bench-grow-' || k, e.plan_id, e.invoice_id, e.subscription_id,
           'reinstatement', e.status, e.currency, e.gross_amount, e.commission_amount, e.net_amount,
           e.earned_at, now()
    FROM earnings e CROSS JOIN generate_series(1, $1::int - 1) k
    WHERE e.api_id = $2
    """,
]
GROWTH, GROWTH_GOAL = 10, 1.2
EARNINGS_INDEX = "ix_earnings_api_earned"
# 10x the API's usage rows: nine times as many other consumers, each subscribed with the same
# hourly windows ($1 consumers so far, $2 consumers wanted, $3 the API, $4 hours, $5 the start).
GROW_USAGE_SQL = [
    MORE_CONSUMERS_SQL,
    """
    INSERT INTO subscriptions (id, consumer_id, api_id, pricing_plan_id, plan_version, status,
                               api_key_suspended, started_at, cancel_at_period_end, created_at, updated_at)
    SELECT gen_random_uuid(), c.id, $1,
           ('00000000-0000-0000-0000-00000000000' || (1 + (row_number() OVER () % 2)))::uuid,
           1, 'active', false, now(), false, now(), now()
    FROM consumers c WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.consumer_id = c.id)
    """,
    """
    INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                               successful_calls, failed_calls, created_at)
    SELECT gen_random_uuid(), s.id, $2::timestamptz + make_interval(hours => h),
           $2::timestamptz + make_interval(hours => h + 1),
           (x % 97) + 3, (x % 97), 3, now()
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM subscriptions sub
          WHERE NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.subscription_id = sub.id)) s
    CROSS JOIN generate_series(0, $1::int - 1) h
    CROSS JOIN LATERAL (SELECT (s.i * 7919 + h * 31) AS x) r
    """,
]
GROWTH_ROUNDS = 9  # pairs of one call at 1x and one at 10x
EARNINGS_GROWTH_PAIRS = 200  # the same for earnings, whose call takes milliseconds, not a second
# An earnings round takes about a millisecond a call: enough of them that the median holds still
# while the machine's load comes and goes.
EARNINGS_REPEAT = 400

MIN_USAGE_SQL = """
    SELECT (u.window_start AT TIME ZONE 'UTC')::date AS day, SUM(u.quantity)
    FROM usage_records u JOIN subscriptions s ON s.id = u.subscription_id
    WHERE s.api_id = $1 AND u.window_start >= $2 AND u.window_start < $3
    GROUP BY 1
"""
MIN_EARNINGS_SQL = """
    SELECT currency, SUM(gross_amount), SUM(commission_amount), SUM(net_amount)
    FROM earnings WHERE api_id = $1 AND earned_at >= $2 AND earned_at < $3
    GROUP BY currency
"""


def _asyncpg_sql(statement: Any) -> str:
    """Our SQLAlchemy text() with :name parameters, as asyncpg's $n SQL."""
    sql = str(statement.text)
    for index, name in enumerate(("api_id", "start", "end", "limit"), start=1):
        sql = sql.replace(f":{name}", f"${index}")
    return sql


def asgi_get(app: ASGIApp, path: str, query: str, headers: dict[str, str]) -> Callable[[], Awaitable[bytes]]:
    """A GET sent straight to the ASGI app, as a server delivers it (a fresh scope each time);
    returns the body, raising unless the answer is a 2xx."""
    scope_headers = [(b"host", b"bench")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    request: Message = {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> bytes:
        status = 0
        parts: list[bytes] = []
        received = False

        async def receive() -> Message:
            nonlocal received
            if received:
                return {"type": "http.disconnect"}
            received = True
            return request

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await app(get_scope(path, headers=scope_headers, query=query.encode()), receive, send)
        body = b"".join(parts)
        if not 200 <= status < 300:
            raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
        return body

    return call


async def _medians(runs: dict[str, Callable[[], Awaitable[object]]], repeat: int) -> dict[str, float]:
    """Median time of each run, interleaved round-robin so load from elsewhere hits all of them alike."""
    for run in runs.values():
        await run()  # warm the caches and plans
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            await run()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


async def _seed(url: str, consumers: int, hours: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await connection.execute(SEED_SQL[0], API_ID, CREATOR)
        await connection.execute(SEED_SQL[1], API_ID)
        await connection.execute(SEED_SQL[2])
        await connection.execute(SEED_SQL[3], consumers)
        await connection.execute(SEED_SQL[4], API_ID)
        await connection.execute(SEED_SQL[5], hours, START)
        await connection.execute(SEED_SQL[6], START)
        await connection.execute(SEED_SQL[7], START, CREATOR)
        await connection.execute("VACUUM ANALYZE")
        count = await connection.fetchval("SELECT count(*) FROM usage_records")
        earnings = await connection.fetchval("SELECT count(*) FROM earnings")
        print(f"seeded {count:,} usage rows, {earnings:,} earnings in {time.perf_counter() - started:.1f}s")
    finally:
        await connection.close()


@dataclass
class Served:
    """The app over one database, answering its two endpoints (`calls`: path -> a GET), a raw
    connection to the same database, and the period both are asked for."""

    calls: dict[str, Callable[[], Awaitable[bytes]]]
    raw: asyncpg.Connection
    lower: datetime
    upper: datetime


@asynccontextmanager
async def _served(url: str, hours: int) -> AsyncIterator[Served]:
    settings = load_settings(
        database_url=url,
        redis_url="redis://127.0.0.1:1/0",
        stripe_secret_key="sk_test_bench",
        stripe_webhook_secret="whsec_bench",
        jwt_secret=JWT_SECRET,
        api_key_service_url="http://apikeys.invalid",
        metering_service_url="http://metering.invalid",
        log_level="WARNING",
        # A statement over 10M rows takes seconds: the API's 1 s bound would answer 503.
        db_command_timeout_seconds=120,
    )
    token = jwt.encode(
        {"sub": CREATOR, "custom:user_type": "creator", "exp": datetime.now(UTC) + timedelta(hours=1)},
        JWT_SECRET,
        algorithm="HS256",
    )
    end_day = (START + timedelta(hours=hours)).date()
    params = {"from": START.date().isoformat(), "to": end_day.isoformat()}
    lower, upper = START, datetime.combine(end_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    app = create_app(settings)
    raw = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with app.router.lifespan_context(app):
            headers = {"Authorization": f"Bearer {token}"}
            query = urlencode(params)
            calls = {
                path: asgi_get(app, f"/api/v1/apis/{API_ID}/{path}", query, headers)
                for path in ("usage", "earnings")
            }
            yield Served(calls, raw, lower, upper)
    finally:
        await raw.close()


async def _bench(url: str, repeat: int, hours: int) -> dict[str, float]:
    results: dict[str, float] = {}
    async with _served(url, hours) as served:
        calls, raw, lower, upper = served.calls, served.raw, served.lower, served.upper

        async def endpoint(path: str) -> None:
            await calls[path]()

        async def same_sql_usage() -> None:
            await raw.fetch(_asyncpg_sql(USAGE_SQL), API_ID, lower, upper, 10)

        async def same_sql_earnings() -> None:
            # The endpoint's one statement: the owner check and the aggregate together.
            await raw.fetch(EARNINGS_SQL, API_ID, lower, upper, CREATOR, False)

        usage = {
            "usage endpoint": lambda: endpoint("usage"),
            "usage same SQL, bare": same_sql_usage,
            "usage minimal GROUP BY day": lambda: raw.fetch(MIN_USAGE_SQL, API_ID, lower, upper),
        }
        earnings = {
            "earnings endpoint": lambda: endpoint("earnings"),
            "earnings same SQL, bare": same_sql_earnings,
            "earnings minimal GROUP BY currency": lambda: raw.fetch(MIN_EARNINGS_SQL, API_ID, lower, upper),
        }
        results.update(await _medians(usage, repeat))
        results.update(await _medians(earnings, max(repeat, EARNINGS_REPEAT)))
    return results


def _report(results: dict[str, float]) -> list[Figure]:
    for name, seconds in results.items():
        print(f"{name:<40} {seconds * 1000:9.1f} ms")
    figures: list[Figure] = []
    for kind, minimal in (
        ("usage", "usage minimal GROUP BY day"),
        ("earnings", "earnings minimal GROUP BY currency"),
    ):
        endpoint = results[f"{kind} endpoint"]
        detail = f"{results[f'{kind} same SQL, bare'] * 1000:.1f} ms bare"
        figures.append(
            Figure(
                f"{kind} endpoint / same SQL bare",
                endpoint / results[f"{kind} same SQL, bare"],
                GOAL,
                False,
                detail,
            )
        )
        print(
            f"{kind}: endpoint / same SQL bare = {endpoint / results[f'{kind} same SQL, bare']:.2f}x"
            f" (goal <= 1.25x); endpoint / minimal aggregate = {endpoint / results[minimal]:.2f}x"
        )
    return figures


@asynccontextmanager
async def _copy_of(url: str, name: str) -> AsyncIterator[str]:
    """A copy of the database at `url` (as it is now, nobody connected to it) on the same
    server, dropped after the block (and before, if a killed run left one)."""
    source = make_url(url)
    admin_dsn = (
        source.set(database="postgres")
        .render_as_string(hide_password=False)
        .replace("postgresql+asyncpg://", "postgresql://")
    )

    async def admin(*statements: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    drop = f'DROP DATABASE IF EXISTS "{name}"'
    await admin(drop, f'CREATE DATABASE "{name}" TEMPLATE "{source.database}"')
    try:
        yield source.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(drop)


async def _pairs(
    url: str, url_10x: str, hours: int, path: str, rounds: int, *, warm: int
) -> list[tuple[float, float]]:
    """`rounds` pairs of (seconds at 1x, seconds at 10x) of one endpoint's call, served by an app
    over each database, in an order that alternates; after `warm` untimed calls of each."""
    pairs: list[tuple[float, float]] = []
    async with _served(url, hours) as at_1x, _served(url_10x, hours) as at_10x:
        one, ten = at_1x.calls[path], at_10x.calls[path]
        for _ in range(warm):  # each app's connection, plans and caches
            await one()
            await ten()
        for round_ in range(rounds):
            seconds: dict[int, float] = {}
            for size, call in ((1, one), (10, ten)) if round_ % 2 == 0 else ((10, ten), (1, one)):
                started = time.perf_counter()
                await call()
                seconds[size] = time.perf_counter() - started
            pairs.append((seconds[1], seconds[10]))
    return pairs


def _medians_of(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """The median of the pairs' ratios (10x / 1x), and the median time at 1x and at 10x."""
    growth = statistics.median(at_10x / at_1x for at_1x, at_10x in pairs)
    return growth, statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


async def _earnings_growth(url: str, hours: int) -> list[Figure]:
    """The earnings endpoint over a table of 10x the rows (a copy of the database, grown) against
    the same endpoint over the 1x database on the same server, side by side: EARNINGS_GROWTH_PAIRS
    pairs of one call each, in an order that alternates, the figure the median of the pairs'
    ratios (a before-and-after of one table read 1.00 to 1.55 from run to run as the machine's
    speed drifted between the two). A keyed read: within 1.2x; EXPLAIN shows the API's index."""
    async with _copy_of(url, "bench_earnings_10x") as url_10x:
        connection = await asyncpg.connect(url_10x.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute(GROW_EARNINGS_SQL[0], GROWTH)
            await connection.execute(GROW_EARNINGS_SQL[1], GROWTH, API_ID)
            await connection.execute("VACUUM ANALYZE earnings")
            rows = int(await connection.fetchval("SELECT count(*) FROM earnings"))
            lower, upper = START, START + timedelta(hours=hours, days=1)
            plan = "\n".join(
                r[0]
                for r in await connection.fetch(
                    "EXPLAIN " + EARNINGS_SQL, API_ID, lower, upper, CREATOR, False
                )
            )
        finally:
            await connection.close()
        pairs = await _pairs(url, url_10x, hours, "earnings", EARNINGS_GROWTH_PAIRS, warm=20)
    growth, before, after = _medians_of(pairs)
    print(
        f"earnings at {rows:,} rows ({GROWTH}x): endpoint {after * 1000:.2f} ms against "
        f"{before * 1000:.2f} ms at 1x, {growth:.2f}x (median of {EARNINGS_GROWTH_PAIRS} pairs; "
        f"goal <= {GROWTH_GOAL}); EXPLAIN:\n{plan}"
    )
    return [
        Figure("earnings endpoint at 10x rows / at 1x", growth, GROWTH_GOAL, False, f"{rows:,} rows"),
        Figure("earnings: EXPLAIN at 10x uses the API index", float(EARNINGS_INDEX in plan), 1, True),
    ]


async def _usage_growth(url: str, args: argparse.Namespace, hours: int, *, before_rows: int) -> Figure:
    """The usage endpoint over 10x the API's rows (a copy of the database, grown) against the
    same endpoint over the 1x database on the same server, side by side: GROWTH_ROUNDS pairs of
    one call each, in an order that alternates, the figure the median of the pairs' ratios (a
    before-and-after of one table, minutes apart, read 0.85 to 1.34 run to run as the machine's
    speed drifted). An aggregate costs at most its share of the rows: growth per row <= 1.2."""
    async with _copy_of(url, "bench_usage_10x") as url_10x:
        connection = await asyncpg.connect(url_10x.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            started = time.perf_counter()
            await connection.execute(GROW_USAGE_SQL[0], args.consumers, args.consumers * GROWTH)
            await connection.execute(GROW_USAGE_SQL[1], API_ID)
            await bulk_insert(connection, "usage_records", GROW_USAGE_SQL[2], hours, START)
            await connection.execute("VACUUM ANALYZE")
            rows = int(await connection.fetchval("SELECT count(*) FROM usage_records"))
            print(f"grew a copy to {rows:,} usage rows in {time.perf_counter() - started:.0f}s", flush=True)
            lower, upper = START, START + timedelta(hours=hours, days=1)
            plan = "\n".join(
                r[0]
                for r in await connection.fetch(
                    "EXPLAIN " + _asyncpg_sql(USAGE_SQL), API_ID, lower, upper, 10
                )
            )
        finally:
            await connection.close()
        pairs = await _pairs(url, url_10x, hours, "usage", GROWTH_ROUNDS, warm=1)
    growth, before, after = _medians_of(pairs)
    per_row = growth / (rows / before_rows)
    print(
        f"usage at {rows:,} rows ({rows / before_rows:.0f}x): endpoint {after * 1000:.0f} ms, "
        f"{growth:.2f}x its cost at {before_rows:,} rows (median of {GROWTH_ROUNDS} pairs: "
        f"{', '.join(f'{t / o:.2f}' for o, t in pairs)}); growth per row {per_row:.2f} "
        f"(goal <= {GROWTH_GOAL}); EXPLAIN:\n{plan}"
    )
    return Figure(
        "usage endpoint at 10x rows: cost growth / row growth",
        per_row,
        GROWTH_GOAL,
        False,
        f"{before_rows:,} -> {rows:,} rows, {before * 1000:.0f} -> {after * 1000:.0f} ms",
    )


async def _main(args: argparse.Namespace) -> list[Figure]:
    hours = max(1, args.rows // args.consumers)
    url = os.environ.get("BENCH_DATABASE_URL")
    workdir: Path | None = None
    server: EmbeddedPostgres | None = None
    if url is None:
        workdir = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp"))
        server = EmbeddedPostgres(workdir / "pg")
        admin = server.start()
        name = f"bench_{uuid.uuid4().hex[:8]}"
        connection = await asyncpg.connect(admin.replace("postgresql://", "postgres://"))
        await connection.execute(f'CREATE DATABASE "{name}"')
        await connection.close()
        url = admin.replace("/postgres?", f"/{name}?")
    try:
        await asyncio.to_thread(upgrade, url)
        await _seed(url.replace("postgresql+asyncpg://", "postgresql://"), args.consumers, hours)
        print(f"{args.consumers:,} consumers x {hours:,} hourly windows; median of {args.repeat} warm runs")
        figures = _report(await _bench(url, args.repeat, hours))
        figures += await _earnings_growth(url, hours)
        figures.append(await _usage_growth(url, args, hours, before_rows=args.consumers * hours))
        return figures
    finally:
        if server is not None:
            server.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> list[Figure]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage rows for the API")
    parser.add_argument("--consumers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
