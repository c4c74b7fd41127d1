"""Fixtures of the entitlement tests: the app as the gateway calls it, and business time in its period.

Fixtures one folder shares live in that folder's conftest; those several folders share live in
`tests.support.fixtures`. Test modules import neither: pytest hands fixtures to the tests by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from tests.support.asgi import running
from tests.support.entitlement_data import IN_PERIOD, gateway_settings


@pytest.fixture(scope="module")
async def gateway(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with the gateway's service tokens, started once per module, and a client of it."""
    # A generous Redis timeout: these tests are about exact counts on a loaded machine, not latency.
    async with running(gateway_settings(settings, entitlements_redis_timeout_seconds=10)) as pair:
        yield pair


@pytest.fixture
async def http(gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine) -> httpx.AsyncClient:
    """The gateway's client, for a test that starts on empty tables (`engine` truncates them)."""
    return gateway[1]


@pytest.fixture
def business_time() -> Iterator[clock.ManualClock]:
    """Business time three days into the period of `entitled` subscriptions, moved only when told."""
    manual = clock.ManualClock(IN_PERIOD)
    with clock.use(manual):
        yield manual
