"""Engines, session factories, the declarative base and the unit of work."""

from app.db.base import Base
from app.db.session import (
    create_engine,
    create_job_engine,
    create_read_sessionmaker,
    create_sessionmaker,
    driver_connection,
    read_connection,
)

__all__ = [
    "Base",
    "create_engine",
    "create_job_engine",
    "create_read_sessionmaker",
    "create_sessionmaker",
    "driver_connection",
    "read_connection",
]
