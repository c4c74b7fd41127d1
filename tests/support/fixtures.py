"""Fixtures shared by several test modules (registered for all tests by `tests/conftest.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import RedisSettings, create_pool

from app.config import Settings
from app.worker.context import WorkerResources
from tests.support.worker import Ctx


@pytest.fixture
async def worker_ctx(settings: Settings, redis_url: str) -> AsyncIterator[Ctx]:
    """The context arq hands the worker's jobs: opened resources, a Redis pool, a first try."""
    resources = WorkerResources.open(settings)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    yield {"resources": resources, "redis": redis, "job_try": 1}
    await redis.aclose()
    await resources.close()
