from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from app.config import Settings


def create_engine(settings: Settings, *, command_timeout: float | None = None) -> AsyncEngine:
    """The engine of the API: connect, checkout and every statement time out (a stalled database
    is a quick 503, not a request hanging on). Jobs use `create_job_engine`, with longer statements.

    No pre-ping (a round trip, three outside a transaction, per checkout): a pooled connection
    the server closed is seen closed by asyncpg (`drop_closed_on_checkout`) and replaced; connections
    are recycled after 30 minutes; and a disconnect met by a statement invalidates the pool, so
    the connections opened before it are replaced too.
    """
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_recycle=1800,
        pool_timeout=settings.db_checkout_timeout_seconds,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": command_timeout or settings.db_command_timeout_seconds,
        },
    )
    event.listen(engine.sync_engine, "checkout", drop_closed_on_checkout)
    return engine


def drop_closed_on_checkout(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """A pooled connection that asyncpg has seen closed (the server ended it, restarted, or the
    socket dropped) is discarded and a new one opened, without a round trip to find out."""
    driver = dbapi_connection.driver_connection
    if driver is None or driver.is_closed():
        raise exc.DisconnectionError("the pooled connection was closed")


def create_probe_engine(database_url: str, *, connect_timeout: float) -> AsyncEngine:
    """A small engine for a command that polls a database with only its URL (`billing migrate
    --check --wait`): the engines' rule (no pre-ping, a closed connection dropped on checkout),
    connecting bounded by `connect_timeout`."""
    engine = create_async_engine(database_url, pool_size=1, connect_args={"timeout": connect_timeout})
    event.listen(engine.sync_engine, "checkout", drop_closed_on_checkout)
    return engine


def create_job_engine(settings: Settings) -> AsyncEngine:
    """The engine of worker jobs and commands: same pool, longer statements (bulk work, sync)."""
    return create_engine(settings, command_timeout=settings.db_worker_command_timeout_seconds)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def create_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads: autocommit, so a GET costs no BEGIN/COMMIT round trips."""
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


async def driver_connection(session: AsyncSession) -> Any:
    """The session's own asyncpg connection: same transaction, and asyncpg keeps each statement
    prepared. For hot statements whose SQLAlchemy cost would exceed the query's own.

    SQLAlchemy's driver adapter sends BEGIN lazily, with the session's first statement through
    it; a statement sent on the driver before that would run (and commit) on its own. So the
    transaction is begun here, as that first statement would begin it (a no-op in autocommit)."""
    raw = await (await session.connection()).get_raw_connection()
    adapted = raw.dbapi_connection
    if adapted is not None and adapted._transaction is None:
        await adapted._start_transaction()
    return raw.driver_connection


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled asyncpg connection for reads that need no session: checked out of the engine's
    pool (its timeouts and checks apply) and handed back as it came. Outside a transaction, so
    each statement stands alone, as in a read session."""
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    finally:
        await greenlet_spawn(pooled.close)
