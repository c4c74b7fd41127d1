"""Which failures mean "the database (or Redis) is unreachable right now": answered 503, retried later.

One rule for the error handlers and the middleware that talk to the database before a route does.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions
from sqlalchemy import exc as sa_exc

# Raised as they are (asyncpg's connect and command timeouts are plain TimeoutError; a refused or
# reset connection is an OSError), or wrapped by SQLAlchemy (then found in the cause chain).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    sa_exc.TimeoutError,  # no pooled connection became free in time
    asyncpg.exceptions.PostgresConnectionError,  # class 08
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, failover, statement timeout
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# What an `except` clause catches before asking `unavailable(exc)`.
MAYBE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *_UNAVAILABLE,
    sa_exc.SQLAlchemyError,
    asyncpg.exceptions.PostgresError,
    asyncpg.exceptions.InterfaceError,
    redis.exceptions.RedisError,
)


def unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says a backing store is unreachable or stalled."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, _UNAVAILABLE):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        orig = seen.orig if isinstance(seen, sa_exc.DBAPIError) else None
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False
