"""Redis unreachable: the check follows the configured policy within its timeout, with a metric and a log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.entitlements.metrics import REDIS_DEGRADED
from tests.support.asgi import running
from tests.support.entitlement_data import GATEWAY, check_body, entitled, gateway_settings

TIMEOUT = 0.3


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A port that accepts connections and never answers: Redis hung, not merely down."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in held:
        writer.close()
    server.close()


def degraded(policy: str) -> float:
    value: float = REDIS_DEGRADED.labels(policy=policy)._value.get()
    return value


@pytest.mark.parametrize(
    ("policy", "allowed", "reason"), [("fail_open", True, "ok"), ("fail_closed", False, "unavailable")]
)
async def test_a_hung_redis_answers_by_policy_within_the_timeout(
    settings: Settings,
    engine: AsyncEngine,
    silent_redis: str,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    allowed: bool,
    reason: str,
) -> None:
    subscription = await entitled(engine, call_limit=1)
    configured = gateway_settings(
        settings,
        redis_url=silent_redis,
        entitlements_redis_policy=policy,
        entitlements_redis_timeout_seconds=TIMEOUT,
    )
    before = degraded(policy)
    async with running(configured) as (_app, http):
        with caplog.at_level(logging.WARNING, logger="app.entitlements.service"):
            started = time.monotonic()
            response = await http.post(
                "/api/v1/entitlements/check", json=check_body(subscription, track=1), headers=GATEWAY
            )
            elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["allowed"], body["reason"], body["degraded"]) == (allowed, reason, True)
    assert elapsed < TIMEOUT + 0.7
    assert degraded(policy) == before + 1
    assert any("redis unavailable" in record.getMessage() for record in caplog.records)


async def test_a_refused_connection_fails_open_by_default(settings: Settings, engine: AsyncEngine) -> None:
    subscription = await entitled(engine)
    async with running(gateway_settings(settings, redis_url="redis://127.0.0.1:1/0")) as (_app, http):
        response = await http.post(
            "/api/v1/entitlements/check", json=check_body(subscription), headers=GATEWAY
        )
    assert (response.json()["allowed"], response.json()["degraded"]) == (True, True)


async def test_track_while_redis_is_down_is_503_so_the_gateway_sends_it_again(
    settings: Settings, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine)
    item = {"subscription_id": str(subscription.id), "api_id": subscription.api_id, "count": 3}
    async with running(gateway_settings(settings, redis_url="redis://127.0.0.1:1/0")) as (_app, http):
        response = await http.post("/api/v1/entitlements/track", json={"calls": [item]}, headers=GATEWAY)
    assert (response.status_code, response.json()["code"]) == (503, "counters_unavailable")
