"""Queries on `stripe_events`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import asyncpg
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.models import StripeEvent

# One autocommitted statement per batch of incoming events; bodies go in as text, parsed as JSONB.
_INSERT_EVENTS = (
    "INSERT INTO stripe_events "
    "(id, type, api_version, stripe_created, livemode, payload, status, attempts, received_at) "
    "SELECT e.id, e.type, e.api_version, e.created, e.livemode, e.payload::jsonb, 'pending', 0, now() "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::text[]) "
    "AS e(id, type, api_version, created, livemode, payload) "
    # An event stored already is left out before the insert: its row may be changed by a job
    # that has not committed yet, and the insert's own check of the key would wait for that job.
    "WHERE NOT EXISTS (SELECT 1 FROM stripe_events s WHERE s.id = e.id) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    id: str
    type: str
    api_version: str | None
    created: int
    livemode: bool
    payload: str


@dataclass(frozen=True, slots=True)
class DbTimeouts:
    """Seconds: connecting, each statement, and waiting for a free pooled connection."""

    connect: float
    command: float
    checkout: float


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset of a connection handed back: nothing to undo. Its connections run only
    the autocommitted batch INSERT (no SET, LISTEN, cursor or advisory lock), so the default
    reset's RESET ALL round trip after every batch buys nothing; asyncpg still rolls back a
    connection handed back inside a transaction."""


class EventStore:
    """Stores incoming events through a small asyncpg pool of its own.

    Ingest is one INSERT per batch that commits by itself, so it skips the ORM session, its
    transaction round trips and the pool's pre-ping: this is what Stripe waits on.
    """

    def __init__(self, pool: Any, *, checkout_timeout: float) -> None:
        self._pool = pool
        self._checkout_timeout = checkout_timeout

    @classmethod
    async def open(cls, database_url: str, *, max_size: int, timeouts: DbTimeouts) -> Self:
        """The pool, with connecting, checking out and each statement bounded in time."""
        # min_size=0: the API starts (and answers probes) even while the database is away.
        pool = await asyncpg.create_pool(
            asyncpg_dsn(database_url),
            min_size=0,
            max_size=max_size,
            timeout=timeouts.connect,
            command_timeout=timeouts.command,
            reset=_keep_session,
        )
        return cls(pool, checkout_timeout=timeouts.checkout)

    async def close(self) -> None:
        await self._pool.close()

    async def insert_new(self, events: Sequence[IncomingEvent]) -> set[str]:
        """Store the events not stored yet (duplicates are no-ops); returns the ids stored now.

        Raises UnstorableEvent when PostgreSQL refuses the values (the whole statement stores nothing).
        The events go in in order of their ids, so two batches holding some of the same events (a
        redelivery while the first delivery is being stored) take their row locks in one order:
        one waits for the other's commit instead of the two deadlocking.
        """
        events = sorted(events, key=lambda e: e.id)
        try:
            async with self._pool.acquire(timeout=self._checkout_timeout) as connection:
                rows = await connection.fetch(
                    _INSERT_EVENTS,
                    [e.id for e in events],
                    [e.type for e in events],
                    [e.api_version for e in events],
                    [e.created for e in events],
                    [e.livemode for e in events],
                    [e.payload for e in events],
                )
        # Server-side data errors (class 22) and client-side encoding errors (ValueError subclasses).
        except (asyncpg.exceptions.DataError, ValueError) as exc:
            raise UnstorableEvent(str(exc)) from exc
        return {row["id"] for row in rows}


class UnstorableEvent(Exception):
    """PostgreSQL cannot store an event's values as they are (e.g. a NUL character, a huge number)."""


class StripeEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def lock(self, event_id: str) -> StripeEvent | None:
        """The event, locked for this transaction; None if absent or another worker holds it."""
        statement = select(StripeEvent).where(StripeEvent.id == event_id).with_for_update(skip_locked=True)
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def get(self, event_id: str) -> StripeEvent | None:
        return await self._session.get(StripeEvent, event_id)

    async def record_failure(self, event_id: str, error: str, *, final: bool) -> int:
        """Count a failed attempt; returns the attempts so far."""
        statement = (
            update(StripeEvent)
            .where(StripeEvent.id == event_id)
            .values(
                attempts=StripeEvent.attempts + 1,
                last_error=error[:4000],
                status="failed" if final else "pending",
            )
            .returning(StripeEvent.attempts)
        )
        return int((await self._session.execute(statement)).scalar_one())

    async def pending_ids(self, *, received_before: datetime, limit: int) -> Sequence[str]:
        statement = (
            select(StripeEvent.id)
            .where(StripeEvent.status == "pending", StripeEvent.received_at < received_before)
            .order_by(StripeEvent.received_at)
            .limit(limit)
        )
        return (await self._session.execute(statement)).scalars().all()

    async def ids_for_replay(
        self, *, event_id: str | None, failed: bool, since: datetime | None
    ) -> Sequence[str]:
        """Ids of the events to reprocess, oldest Stripe creation first."""
        statement = select(StripeEvent.id).order_by(StripeEvent.stripe_created, StripeEvent.id)
        if event_id is not None:
            statement = statement.where(StripeEvent.id == event_id)
        if failed:
            statement = statement.where(StripeEvent.status == "failed")
        if since is not None:
            statement = statement.where(StripeEvent.received_at >= since)
        return (await self._session.execute(statement)).scalars().all()


def mark_done(event: StripeEvent, status: str) -> None:
    event.status = status
    event.attempts += 1
    event.last_error = None
    event.processed_at = clock.now()
