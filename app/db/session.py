from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import Settings


def create_engine(settings: Settings, *, command_timeout: float | None = None) -> AsyncEngine:
    """The engine of the API: connect, checkout and every statement time out (a stalled database
    is a quick 503, not a request hanging on). Jobs use `create_job_engine`, with longer statements.
    """
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=settings.db_checkout_timeout_seconds,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": command_timeout or settings.db_command_timeout_seconds,
        },
    )


def create_job_engine(settings: Settings) -> AsyncEngine:
    """The engine of worker jobs and commands: same pool, longer statements (bulk work, sync)."""
    return create_engine(settings, command_timeout=settings.db_worker_command_timeout_seconds)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def create_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads: autocommit, so a GET costs no BEGIN/COMMIT round trips."""
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
