"""Session-wide embedded PostgreSQL, Redis and Stripe emulator; per-test isolation by truncation."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings
from app.db.migrate import upgrade
from app.dev.processes import EmbeddedPostgres, free_port, redis_server, stripe_emulator
from app.main import create_app
from tests.support.asgi import api_client
from tests.support.auth import Auth, bearer
from tests.support.factories import TokenFactory
from tests.support.settings import make_settings
from tests.support.worker import truncate

# Fixtures several test modules share live in tests/support/, registered here for every test.
pytest_plugins = ["tests.support.fixtures", "tests.support.stripe_wire"]


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Short path: PostgreSQL's unix socket lives inside it and socket paths max out near 100 chars.
    path = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_uri(workdir: Path) -> Iterator[str]:
    server = EmbeddedPostgres(workdir / "pg")
    uri = server.start()
    yield uri
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_uri: str) -> str:
    """A fresh database for this run, migrated to head."""
    import asyncpg

    name = f"billing_test_{uuid.uuid4().hex[:8]}"
    admin_url = postgres_uri.replace("postgresql://", "postgres://")

    async def create() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    url = postgres_uri.replace("/postgres?", f"/{name}?")
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    port = free_port()
    server = redis_server(workdir / "redis", port, persist=False)
    server.start()
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


@pytest.fixture(scope="session")
def stripe_api_base() -> Iterator[str]:
    port = free_port()
    emulator = stripe_emulator(port, data_file=None)
    emulator.start(timeout=30)
    yield f"http://127.0.0.1:{port}"
    emulator.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, stripe_api_base: str) -> Settings:
    return make_settings(database_url=database_url, redis_url=redis_url, stripe_api_base=stripe_api_base)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def clean_database(request: pytest.FixtureRequest) -> None:
    """Every test that touches the database starts from empty tables."""
    if "engine" not in request.fixturenames and "client" not in request.fixturenames:
        return
    await truncate(request.getfixturevalue("engine"))


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as http:
        yield http


@pytest.fixture
def tokens() -> TokenFactory:
    return TokenFactory()


@pytest.fixture
def auth(tokens: TokenFactory) -> Auth:
    """Authorization headers for a (new, unique by default) user of the given role."""

    def headers(role: str = "consumer", user_id: str | None = None, **claims: Any) -> dict[str, str]:
        return bearer(tokens.make(role=role, user_id=user_id, **claims))

    return headers
