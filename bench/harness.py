"""What every benchmark shares: the embedded stack, an in-process client, a load loop, and the
alternating round of a baseline and what it is compared with.

Figures are ratios against a baseline measured in the same run with the same client, because
absolute times on a shared 2-core machine mean little.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import make_url

from app.config import Settings, load_settings
from app.db.migrate import upgrade
from app.dev.processes import EmbeddedPostgres, free_port, redis_server, stripe_emulator

JWT_SECRET = "bench-jwt-secret-0123456789abcdef-0123"
WEBHOOK_SECRET = "whsec_bench"
# Consumers `bench-user-<n>` for n in ($1, $2]: the 10x runs' more consumers.
T = TypeVar("T")
MORE_CONSUMERS_SQL = """
    INSERT INTO consumers (id, user_id, email, stripe_customer_id, created_at, updated_at)
    SELECT gen_random_uuid(), 'bench-user-' || n, 'bench-user-' || n || '@example.com',
           'cus_bench' || n, now(), now()
    FROM generate_series($1::int + 1, $2::int) n
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def line(self, name: str) -> str:
        return (
            f"{name:<28} {self.throughput:9.0f} req/s   p50 {self.p50_ms:7.2f} ms   p99 {self.p99_ms:7.2f} ms"
        )


@asynccontextmanager
async def embedded_stack(
    *, with_stripe: bool = False, server: Mapping[str, str] | None = None
) -> AsyncIterator[Settings]:
    """Embedded PostgreSQL (migrated) and Redis, optionally the Stripe emulator; settings for them.
    `server`: PostgreSQL settings (ALTER SYSTEM) to restart the server with, such as a bench's
    shared_buffers sized for its tables."""
    folder = Path(tempfile.mkdtemp(prefix="bb", dir="/tmp"))
    postgres = EmbeddedPostgres(folder / "pg")
    redis_port = free_port()
    redis = redis_server(folder / "redis", redis_port, persist=False)
    stripe = stripe_emulator(free_port(), None) if with_stripe else None
    try:
        database_url = await asyncio.to_thread(postgres.start)
        if server:
            connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                for name, value in server.items():
                    await connection.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            finally:
                await connection.close()
            await asyncio.to_thread(postgres.restart)
        await asyncio.to_thread(upgrade, database_url)
        redis.start()
        if stripe is not None:
            stripe.start(timeout=30)
        yield load_settings(
            database_url=database_url,
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            stripe_secret_key="sk_test_bench",
            stripe_api_base=f"http://127.0.0.1:{stripe.port}" if stripe else "http://127.0.0.1:1",
            stripe_webhook_secret=WEBHOOK_SECRET,
            jwt_secret=JWT_SECRET,
            api_key_service_url="http://127.0.0.1:1",
            metering_service_url="http://127.0.0.1:1",
            log_level="WARNING",
            db_pool_size=10,
        )
    finally:
        if stripe is not None:
            stripe.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def second_database(database_url: str, name: str) -> str:
    """Another migrated database on the same server (same machine, same load) for the 10x table."""
    admin = database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, url)
    return url


async def bulk_insert(connection: asyncpg.Connection, table: str, statement: str, *args: object) -> None:
    """Run one INSERT ... SELECT (seed data made by generate_series) into `table` with its keys,
    foreign keys and indexes set aside, then put them back as they were: a sort per index and a
    join per foreign key instead of a random index insert and a lookup per row (10M-row seeds).
    The table ends with exactly its migrated constraints and indexes."""
    constraints = await connection.fetch(
        "SELECT conname, contype, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'f') "
        "ORDER BY array_position(ARRAY['p', 'u', 'f'], contype::text)",
        table,
    )
    indexes = await connection.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass)",
        table,
    )
    async with connection.transaction():
        await connection.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for row in reversed(constraints):  # foreign keys first, then unique keys, then the primary key
            await connection.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{row["conname"]}"')
        for row in indexes:
            await connection.execute(f'DROP INDEX "{row["indexname"]}"')
        await connection.execute(statement, *args)
        for row in constraints:  # primary key, unique keys, then foreign keys
            await connection.execute(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{row["conname"]}" {row["definition"]}'
            )
        for row in indexes:
            await connection.execute(row["indexdef"])


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http,
    ):
        yield http


async def load(
    send: Callable[[], Awaitable[httpx.Response]], *, concurrency: int, requests: int, warmup: int = 50
) -> LoadResult:
    """Send `requests` requests from `concurrency` workers; every answer must be a 2xx."""
    for _ in range(warmup):
        (await send()).raise_for_status()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await send()
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return LoadResult(len(latencies), elapsed, cuts[49] * 1e3, cuts[98] * 1e3)


async def alternating(
    round_: int, baseline: Callable[[], Awaitable[T]], measured: Callable[[], Awaitable[T]]
) -> tuple[T, T]:
    """One round of a baseline and what is measured against it, (baseline, measured): the
    baseline first in even rounds, second in odd ones (ABBA), so a drift in load favours neither."""
    if round_ % 2:
        after = await measured()
        return await baseline(), after
    before = await baseline()
    return before, await measured()


@dataclass(frozen=True)
class Figure:
    """One row of `make bench`'s table: a ratio measured in this run and the goal it must meet."""

    name: str
    value: float
    goal: float
    at_least: bool  # True: the value must be >= the goal; False: <= it
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.goal if self.at_least else self.value <= self.goal

    @property
    def goal_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.goal:g}"
