"""Engine, session factory, declarative base and the request-scoped session."""

from app.db.base import Base
from app.db.session import (
    DbSession,
    ReadSession,
    create_engine,
    create_job_engine,
    create_read_sessionmaker,
    create_sessionmaker,
    driver_connection,
    get_session,
)

__all__ = [
    "Base",
    "DbSession",
    "ReadSession",
    "create_engine",
    "create_job_engine",
    "create_read_sessionmaker",
    "create_sessionmaker",
    "driver_connection",
    "get_session",
]
