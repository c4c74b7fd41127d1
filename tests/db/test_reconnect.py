"""Pooled connections that the server has closed are replaced on checkout, without a ping.

The API's engine has no pre-ping (a round trip per checkout): these tests end the pool's
backends from the server side (pg_terminate_backend, as a restart or an idle timeout would) and
check that the next requests still get their answer from the database, on new connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dependencies import api_state
from app.main import create_app
from tests.support.auth import Auth
from tests.support.settings import make_settings

CONNECTIONS = 3


@pytest.fixture
async def own_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """An app with an engine of its own, so that ending its connections touches no other test."""
    application = create_app(
        make_settings(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            stripe_api_base=settings.stripe_api_base,
        )
    )
    async with application.router.lifespan_context(application):
        yield application


async def _pooled_backends(engine: AsyncEngine) -> set[int]:
    """Check out CONNECTIONS connections at once (so the pool keeps that many); their server pids."""
    all_held = asyncio.Barrier(CONNECTIONS)
    pids: set[int] = set()

    async def hold() -> None:
        async with engine.connect() as connection:
            pids.add(int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            await all_held.wait()

    await asyncio.gather(*(hold() for _ in range(CONNECTIONS)))
    return pids


async def _terminate(postgres_uri: str, pids: set[int]) -> None:
    connection = await asyncpg.connect(postgres_uri.replace("postgresql://", "postgres://"))
    try:
        ended = await connection.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid) t",
            list(pids),
        )
        assert ended == len(pids)
    finally:
        await connection.close()


async def test_requests_after_the_server_ended_every_pooled_connection_are_answered(
    own_app: FastAPI, postgres_uri: str, auth: Auth
) -> None:
    engine: AsyncEngine = api_state(own_app).resources.engine
    old = await _pooled_backends(engine)
    await _terminate(postgres_uri, old)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the client's sockets

    headers = auth("creator")
    transport = httpx.ASGITransport(app=own_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as http:
        # Each read asks the database whether the API exists: 404 is its answer, 503 would be a
        # connection that was handed out dead.
        responses = await asyncio.gather(
            *(http.get("/api/v1/apis/no-such-api/earnings", headers=headers) for _ in range(CONNECTIONS))
        )
    assert [r.status_code for r in responses] == [404] * CONNECTIONS, [r.text for r in responses]
    assert {r.json()["error"] for r in responses} == {"API not found"}
    assert not old & await _pooled_backends(engine), "a dead connection is still pooled"


async def test_a_transaction_after_the_server_ended_the_pooled_connection_commits(
    own_app: FastAPI, postgres_uri: str
) -> None:
    engine: AsyncEngine = api_state(own_app).resources.engine
    await _terminate(postgres_uri, await _pooled_backends(engine))
    await asyncio.sleep(0.2)
    async with engine.begin() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
