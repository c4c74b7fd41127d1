"""Queries on `stripe_events`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.models import StripeEvent

# Raw SQL on the hot path: the body goes in as text and PostgreSQL parses it once as JSONB.
_INSERT_EVENT = text(
    "INSERT INTO stripe_events "
    "(id, type, api_version, stripe_created, livemode, payload, status, attempts, received_at) "
    "VALUES (:id, :type, :api_version, :stripe_created, :livemode, CAST(:payload AS jsonb), "
    "'pending', 0, now()) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)


class StripeEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def insert_if_absent(
        self,
        *,
        event_id: str,
        event_type: str,
        api_version: str | None,
        created: int,
        livemode: bool,
        payload: str,
    ) -> bool:
        """Store the event unless it is already stored; True when this call stored it."""
        result = await self._session.execute(
            _INSERT_EVENT,
            {
                "id": event_id,
                "type": event_type,
                "api_version": api_version,
                "stripe_created": created,
                "livemode": livemode,
                "payload": payload,
            },
        )
        return result.scalar_one_or_none() is not None

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
    event.processed_at = utcnow()
