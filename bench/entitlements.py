"""The gateway's entitlement path, against baselines measured in the same run.

    python -m bench entitlements

On embedded PostgreSQL and Redis, 100 active subscriptions with API keys and a limit no run
reaches:
  1. over real HTTP: `billing api` in its own process (its real configuration: uvloop,
     httptools, no access log line), loaded by `bench.load.closed_loop` (raw keep-alive HTTP/1.1
     from callbacks, a small share of the 2 cores) at 32 connections; `GET /health` and
     `POST /api/v1/entitlements/check` with `track: 1` by turns (ABBA), 2 s each, six rounds;
     the medians of the rounds' ratios and of the check's p99/p50. Goals: throughput >= 0.6x
     /health, p99 <= 3x its own median.
  2. in-process: `EntitlementService.check` called one at a time: p50/p99 in microseconds.
  3. track batches of 100 calls (100 subscriptions, count 1 each) through
     `EntitlementService.track` against a bare Redis pipeline of 100 `INCRBY`: calls counted per
     second in eleven pairs of rounds whose order alternates (ABBA), the median of the pairs'
     ratios. Goal >= 0.5x.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.dependencies import api_state
from app.dev.processes import free_port
from app.entitlements.schemas import CheckRequest, TrackItem, TrackRequest
from app.entitlements.service import EntitlementService
from app.main import create_app
from app.models import Api, Consumer, PricingPlan, PricingPlanVersion, Subscription
from bench.harness import Figure, LoadResult, alternating, embedded_stack
from bench.load import closed_loop, raw_request

TOKEN = "bench-gateway-token-0123456789"
SUBSCRIPTIONS = 100
CONNECTIONS = 32
CHECK_PATH = "/api/v1/entitlements/check"
# Rounds of /health and check by turns, each this long after a short warm-up.
HTTP_ROUNDS = 6
HTTP_SECONDS = 2.0
IN_PROCESS_CHECKS = 5000
TRACK_BATCH = 100
# Alternating pairs of rounds; one pair's ratio ranged from 0.44x to 0.75x in one run (the bare
# pipeline's rate swings most), so the figure is the median of many pairs, not of five.
TRACK_ROUNDS = 11
TRACK_BATCHES_PER_ROUND = 200


@dataclass(frozen=True)
class HttpRound:
    baseline: LoadResult
    measured: LoadResult

    @property
    def ratio(self) -> float:
        return self.measured.throughput / self.baseline.throughput


async def seed(database_url: str) -> list[tuple[uuid.UUID, str, str]]:
    """(subscription id, api id, api key id) of the seeded subscriptions."""
    engine = create_async_engine(database_url)
    now = datetime.now(UTC)
    seeded: list[tuple[uuid.UUID, str, str]] = []
    async with engine.begin() as connection:
        for n in range(SUBSCRIPTIONS):
            user_id, api_id, plan_id, subscription_id = (
                f"bench-{n}",
                f"bench-api-{n}",
                uuid.uuid4(),
                uuid.uuid4(),
            )
            consumer_id = uuid.uuid4()
            await connection.execute(
                insert(Consumer).values(id=consumer_id, user_id=user_id, stripe_customer_id=f"cus_b{n}")
            )
            await connection.execute(insert(Api).values(api_id=api_id, creator_id="bench-creator"))
            await connection.execute(
                insert(PricingPlan).values(
                    id=plan_id,
                    api_id=api_id,
                    name="Pro",
                    type="subscription",
                    features={},
                    current_version=1,
                    rate_limit_per_minute=1_000_000_000,
                )
            )
            await connection.execute(
                insert(PricingPlanVersion).values(
                    id=uuid.uuid4(),
                    plan_id=plan_id,
                    version=1,
                    currency="usd",
                    monthly_amount=2900,
                    call_limit=2_000_000_000,
                )
            )
            await connection.execute(
                insert(Subscription).values(
                    id=subscription_id,
                    consumer_id=consumer_id,
                    api_id=api_id,
                    pricing_plan_id=plan_id,
                    plan_version=1,
                    status="active",
                    api_key_id=f"key_bench_{n}",
                    cancel_at_period_end=False,
                    api_key_suspended=False,
                    started_at=now - timedelta(days=3),
                    current_period_start=now - timedelta(days=3),
                    current_period_end=now + timedelta(days=27),
                )
            )
            seeded.append((subscription_id, api_id, f"key_bench_{n}"))
    await engine.dispose()
    return seeded


def server_env(settings: Settings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "STRIPE_SECRET_KEY": settings.stripe_secret_key.get_secret_value(),
        "STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret.get_secret_value(),
        "STRIPE_API_BASE": settings.stripe_api_base or "http://127.0.0.1:1",
        "JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "API_KEY_SERVICE_URL": settings.api_key_service_url,
        "METERING_SERVICE_URL": settings.metering_service_url,
        "GATEWAY_SERVICE_TOKENS": TOKEN,
        "LOG_LEVEL": "WARNING",
        "PORT": str(port),
    }


async def wait_until_healthy(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        for _ in range(300):
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("billing api did not start")


async def over_http(settings: Settings, key: tuple[uuid.UUID, str, str]) -> list[HttpRound]:
    """`billing api` as deployed, in its own process; `/health` and the check by turns (ABBA), the
    same connections and duration each, so a change in the machine's load hits both alike."""
    port = free_port()
    command = [sys.executable, "-m", "app", "api", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=server_env(settings, port))  # noqa: S603, ASYNC220
    base = f"http://127.0.0.1:{port}"
    host = f"127.0.0.1:{port}"
    body = {"api_key_id": key[2], "api_id": key[1], "track": 1}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    health = raw_request("GET", "/health", host=host)
    check = raw_request("POST", CHECK_PATH, host=host, headers=headers, body=orjson.dumps(body))
    rounds: list[HttpRound] = []
    try:
        await wait_until_healthy(base)

        async def run(request: bytes) -> LoadResult:
            result, failures = await closed_loop(
                "127.0.0.1", port, request, connections=CONNECTIONS, seconds=HTTP_SECONDS
            )
            assert not failures, failures
            return result

        await run(check)  # warm both paths: the snapshot cached, every connection open once
        await run(health)
        for n in range(HTTP_ROUNDS):
            rounds.append(HttpRound(*await alternating(n, lambda: run(health), lambda: run(check))))
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            answer = (await http.post(CHECK_PATH, json=body, headers=headers)).json()
        assert answer["allowed"], answer
        assert answer["used"] >= sum(r.measured.requests for r in rounds), answer
    finally:
        server.terminate()
        server.wait(timeout=20)
    return rounds


async def in_process(service: EntitlementService, key: tuple[uuid.UUID, str, str]) -> tuple[float, float]:
    request = CheckRequest(api_key_id=key[2], api_id=key[1], track=1)
    for _ in range(200):
        await service.check(request)
    latencies: list[float] = []
    for _ in range(IN_PROCESS_CHECKS):
        started = time.perf_counter()
        result, _alerts = await service.check(request)
        latencies.append(time.perf_counter() - started)
        assert result.allowed
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


async def track_batches(
    service: EntitlementService, redis: Redis, seeded: list[tuple[uuid.UUID, str, str]]
) -> list[tuple[float, float]]:
    """(bare, ours) calls per second of each round, the pair's order alternating (ABBA)."""
    request = TrackRequest(
        calls=[TrackItem(subscription_id=s, api_id=a, count=1) for s, a, _ in seeded[:TRACK_BATCH]]
    )
    bare_keys = [f"bench:{{sub:{s}}}:bare" for s, _, _ in seeded[:TRACK_BATCH]]

    async def ours() -> float:
        started = time.perf_counter()
        for _ in range(TRACK_BATCHES_PER_ROUND):
            response, _alerts = await service.track(request)
            assert response.tracked == TRACK_BATCH
        return TRACK_BATCH * TRACK_BATCHES_PER_ROUND / (time.perf_counter() - started)

    async def bare() -> float:
        started = time.perf_counter()
        for _ in range(TRACK_BATCHES_PER_ROUND):
            async with redis.pipeline(transaction=False) as pipe:
                for key in bare_keys:
                    pipe.incrby(key, 1)
                await pipe.execute()
        return TRACK_BATCH * TRACK_BATCHES_PER_ROUND / (time.perf_counter() - started)

    await ours()
    await bare()
    return [await alternating(n, bare, ours) for n in range(TRACK_ROUNDS)]


async def main() -> list[Figure]:
    async with embedded_stack() as base_settings:
        settings = base_settings.model_copy(
            update={"gateway_service_tokens": SecretStr(TOKEN), "entitlements_redis_timeout_seconds": 5.0}
        )
        seeded = await seed(settings.database_url)
        rounds = await over_http(settings, seeded[0])
        for n, r in enumerate(rounds, 1):
            print(r.baseline.line(f"{n}. GET /health"))
            print(r.measured.line(f"{n}. POST check track:1") + f"   ratio {r.ratio:.2f}")
        ratio = statistics.median(r.ratio for r in rounds)
        tail = statistics.median(r.measured.p99_ms / r.measured.p50_ms for r in rounds)
        health_tail = statistics.median(r.baseline.p99_ms / r.baseline.p50_ms for r in rounds)
        print(
            f"HTTP, {CONNECTIONS} connections, median of {len(rounds)} rounds: ratio {ratio:.2f}x /health"
            f" (goal >= 0.6x); check p99/p50 {tail:.2f} (goal <= 3); /health p99/p50 {health_tail:.2f}"
        )

        app = create_app(settings)
        async with app.router.lifespan_context(app):
            service: EntitlementService = api_state(app).entitlements
            p50, p99 = await in_process(service, seeded[1])
            print(f"in-process check track:1: p50 {p50:.0f} us, p99 {p99:.0f} us")
            redis = Redis.from_url(settings.redis_url)
            try:
                track_rounds = await track_batches(service, redis, seeded)
            finally:
                await redis.aclose()
        for n, (bare, ours) in enumerate(track_rounds, 1):
            print(
                f"{n}. track, batches of {TRACK_BATCH}: {ours:,.0f} calls/s;"
                f" bare INCRBY pipeline {bare:,.0f} calls/s   ratio {ours / bare:.2f}"
            )
        track_ratio = statistics.median(ours / bare for bare, ours in track_rounds)
        print(f"track ratio, median of {len(track_rounds)} ABBA rounds: {track_ratio:.2f}x (goal >= 0.5x)")
    conditions = f"{CONNECTIONS} conn, median of {len(rounds)}"
    return [
        Figure("entitlements: check / /health over HTTP", ratio, 0.6, True, conditions),
        Figure("entitlements: check p99 / p50 over HTTP", tail, 3, False, f"/health {health_tail:.2f}"),
        Figure(
            "entitlements: track / bare INCRBY",
            track_ratio,
            0.5,
            True,
            f"batches of {TRACK_BATCH}, median of {len(track_rounds)}",
        ),
    ]


if __name__ == "__main__":
    asyncio.run(main())
