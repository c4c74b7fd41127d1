"""Engine, session factory, declarative base and the request-scoped session."""

from app.db.base import Base
from app.db.session import DbSession, create_engine, create_sessionmaker, get_session

__all__ = ["Base", "DbSession", "create_engine", "create_sessionmaker", "get_session"]
