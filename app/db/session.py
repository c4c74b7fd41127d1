from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.config import Settings

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


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
    prepared. For hot statements whose SQLAlchemy cost would exceed the query's own."""
    raw = await (await session.connection()).get_raw_connection()
    return raw.driver_connection


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the request's transaction has committed (e.g. enqueue a job)."""
    session.info.setdefault("after_commit", []).append(callback)


async def run_after_commit(session: AsyncSession) -> None:
    callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The intent is already stored; a sweeper picks up what this could not hand over.
            log.exception("after-commit callback failed")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed before the response is sent, or rolled back."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        await run_after_commit(session)


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for routes that only read: nothing to commit, each statement stands alone."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with sessionmaker() as session:
        yield session


# scope="function": the commit happens when the route returns, before the response goes out.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
