"""Statements built with SQLAlchemy and compiled once, to run on the asyncpg driver itself.

On a hot path SQLAlchemy's own cost per statement (compiling, processing the result) can be more
than the query's; such a statement is compiled at import into the driver's own SQL ($1, $2, ...)
and sent on the session's driver connection (`app.db.driver_connection`), where asyncpg keeps it
prepared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg

_ASYNCPG = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled once for asyncpg: its SQL and its parameters in order (those built
    with None are given per call, the others keep the values they were built with)."""

    sql: str
    names: tuple[str, ...]
    built: dict[str, Any]

    @classmethod
    def compile(cls, statement: Select[*tuple[Any, ...]]) -> DriverStatement:
        # render_postcompile: expanding parameters (IN lists) become plain positional ones.
        compiled = statement.compile(dialect=_ASYNCPG, compile_kwargs={"render_postcompile": True})
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))

    def args(self, given: Mapping[str, Any]) -> list[Any]:
        """The driver's positional arguments: `given` by name for the parameters built with None."""
        return [given[name] if self.built[name] is None else self.built[name] for name in self.names]
