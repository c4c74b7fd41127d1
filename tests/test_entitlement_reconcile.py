"""The usage worker reconciles the gateway's counters with metering: raised to it, never lowered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from arq.connections import RedisSettings, create_pool
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.worker.context import WorkerResources
from app.worker.webhook_jobs import aggregate_usage
from tests.entitlement_data import GATEWAY, PERIOD_START, check_body, entitled, gateway_settings, running
from tests.test_usage_worker import Metering

Ctx = dict[str, Any]
# The period (from 10 March, 12:00) bills the metering days whose window ends in it, as the
# invoice does (a window counts at its meter event's instant, its end): 10, 11 and 12 March.
TODAY = PERIOD_START + timedelta(days=3)
METERED_IN_PERIOD = 110 + 111 + 112


@pytest.fixture(scope="module")
async def gateway(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(gateway_settings(settings, entitlements_redis_timeout_seconds=10)) as pair:
        yield pair


@pytest.fixture
async def http(gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine) -> httpx.AsyncClient:
    return gateway[1]


@pytest.fixture
async def worker_ctx(settings: Settings, redis_url: str) -> AsyncIterator[Ctx]:
    resources = WorkerResources.open(settings)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    yield {"resources": resources, "redis": redis, "job_try": 1}
    await redis.aclose()
    await resources.close()


@pytest.fixture(autouse=True)
def business_time() -> Iterator[clock.ManualClock]:
    manual = clock.ManualClock(TODAY)
    with clock.use(manual):
        yield manual


async def used(http: httpx.AsyncClient, body: dict[str, Any]) -> int:
    response = await http.post("/api/v1/entitlements/check", json=body, headers=GATEWAY)
    value: int = response.json()["used"]
    return value


async def test_a_counter_behind_metering_is_raised_to_its_count(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=1000)
    assert await used(http, check_body(subscription, track=10)) == 10
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    assert await used(http, check_body(subscription)) == METERED_IN_PERIOD


async def test_a_counter_ahead_of_metering_is_never_lowered(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=1000)
    assert await used(http, check_body(subscription, track=600)) == 600
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    assert await used(http, check_body(subscription)) == 600


async def test_reconciliation_can_exhaust_a_quota_the_gateway_never_tracked(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=200)
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    response = await http.post("/api/v1/entitlements/check", json=check_body(subscription), headers=GATEWAY)
    assert (response.json()["allowed"], response.json()["reason"]) == (False, "quota_exhausted")
