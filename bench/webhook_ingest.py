"""Webhook ingest (verify + persist + enqueue) against a no-op POST of the same app.

Both run in one process on embedded PostgreSQL and Redis, through the same httpx client over
ASGI, with the same concurrency; the ratio is ingest throughput / no-op throughput (goal >= 0.40).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from app.config import load_settings
from app.db.migrate import upgrade
from app.dev.processes import EmbeddedPostgres, free_port, redis_server
from app.main import create_app
from tests.factories import JWT_SECRET, sign_webhook

GOAL = 0.40
REQUESTS = 1500
ROUNDS = 3
CONCURRENCY = 32
WEBHOOK_SECRET = "whsec_bench"  # noqa: S105


def _event() -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.paid",
        "created": int(time.time()),
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {
            "object": {
                "id": f"in_{uuid.uuid4().hex[:24]}",
                "object": "invoice",
                "customer": "cus_bench",
                "status": "paid",
                "amount_due": 2900,
                "amount_paid": 2900,
                "currency": "usd",
                "lines": {"data": [{"id": "il_1", "amount": 2900, "currency": "usd"}]},
            }
        },
    }


def _signed() -> tuple[bytes, str]:
    return sign_webhook(orjson.dumps(_event()), secret=WEBHOOK_SECRET)


async def _throughput(count: int, send: Callable[[int], Awaitable[httpx.Response]]) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            response = await send(index)
            assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - started)


async def _create_database(admin_uri: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin_uri.replace("postgresql://", "postgres://"))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin_uri.replace("/postgres?", f"/{name}?")


async def _run(database_url: str, redis_url: str) -> float:
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        stripe_secret_key="sk_test_bench",  # noqa: S106
        stripe_webhook_secret=WEBHOOK_SECRET,
        jwt_secret=JWT_SECRET,
        api_key_service_url="http://apikeys.invalid",
        metering_service_url="http://metering.invalid",
        stripe_api_base="http://127.0.0.1:9",
        log_level="WARNING",
        db_pool_size=CONCURRENCY,
    )
    app = create_app(settings)

    @app.post("/bench/noop")
    async def noop() -> dict[str, bool]:
        return {"received": True}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.bench") as client:
            warm = [_signed() for _ in range(200)]

            async def ingest(index: int, batch: list[tuple[bytes, str]]) -> httpx.Response:
                body, header = batch[index]
                headers = {"Stripe-Signature": header}
                return await client.post("/webhooks/stripe", content=body, headers=headers)

            async def no_op(index: int) -> httpx.Response:
                body, header = warm[index % len(warm)]
                return await client.post("/bench/noop", content=body, headers={"Stripe-Signature": header})

            await _throughput(200, lambda i: ingest(i, warm))
            await _throughput(200, no_op)
            # Alternate the two so load from elsewhere on the machine hits both alike.
            rates: list[tuple[float, float]] = []
            for _ in range(ROUNDS):
                signed = [_signed() for _ in range(REQUESTS)]
                noop_rate = await _throughput(REQUESTS, no_op)
                ingest_rate = await _throughput(REQUESTS, functools.partial(ingest, batch=signed))
                rates.append((noop_rate, ingest_rate))
    noop_rate, ingest_rate = sorted(rates, key=lambda r: r[1] / r[0])[len(rates) // 2]
    ratio = ingest_rate / noop_rate
    print(f"no-op POST:      {noop_rate:8.0f} req/s")
    print(f"webhook ingest:  {ingest_rate:8.0f} req/s")
    print(f"ratio ingest/no-op: {ratio:.2f}x (goal >= {GOAL:.2f}x; median of {ROUNDS} alternating rounds)")
    return ratio


def main() -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="bb", dir="/tmp"))
    postgres = EmbeddedPostgres(workdir / "pg")
    port = free_port()
    redis = redis_server(workdir / "redis", port, persist=False)
    try:
        admin_uri = postgres.start()
        redis.start()
        database_url = asyncio.run(_create_database(admin_uri))
        upgrade(database_url)
        ratio = asyncio.run(_run(database_url, f"redis://127.0.0.1:{port}/0"))
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return ratio >= GOAL


if __name__ == "__main__":
    main()
