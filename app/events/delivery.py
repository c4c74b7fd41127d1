"""Delivery of marketplace events: signed POSTs to every configured endpoint, retried with backoff.

One attempt runs in one transaction holding the event row (`FOR UPDATE SKIP LOCKED`), so two
workers never send the same event at once. Events of one subscription go out in the order they
were written: an event waits while an earlier one of its subscription is pending (one that
failed for good no longer holds the others back; `billing events replay` sends it again). Each
attempt at each endpoint is a row of the delivery log; an endpoint that took the event is not
sent it again in that round. After `marketplace_webhook_max_attempts` the event is `failed`.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import orjson
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.events.signature import SIGNATURE_HEADER, sign
from app.models import MarketplaceEvent, MarketplaceEventDelivery

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 3600.0
_jitter = secrets.SystemRandom()


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with equal jitter: 10 s, 20 s, 40 s ... up to an hour."""
    step = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempts - 1))
    return timedelta(seconds=step / 2 + _jitter.uniform(0, step / 2))


def event_body(event: MarketplaceEvent) -> bytes:
    """The JSON an endpoint receives (documented in docs/events.md)."""
    return orjson.dumps(
        {
            "id": str(event.id),
            "type": event.type,
            "created_at": event.created_at.isoformat(),
            "subscription_id": str(event.subscription_id) if event.subscription_id else None,
            "sequence": event.seq,
            "data": event.payload,
        }
    )


@dataclass
class DeliveryRun:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    endpoints_called: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)


def _due(now: datetime) -> Select[MarketplaceEvent]:
    earlier = MarketplaceEvent.__table__.alias("earlier")
    blocked = (
        select(earlier.c.id)
        .where(
            earlier.c.subscription_id == MarketplaceEvent.subscription_id,
            earlier.c.seq < MarketplaceEvent.seq,
            earlier.c.status == "pending",
        )
        .exists()
    )
    return (
        select(MarketplaceEvent)
        .where(MarketplaceEvent.status == "pending", MarketplaceEvent.next_attempt_at <= now, ~blocked)
        .order_by(MarketplaceEvent.seq)
        .limit(1)
        .with_for_update(skip_locked=True, of=MarketplaceEvent)
    )


class EventDelivery:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], http: httpx.AsyncClient, settings: Settings
    ) -> None:
        self._sessionmaker = sessionmaker
        self._http = http
        self._endpoints = settings.marketplace_endpoints
        self._secrets = settings.marketplace_secrets
        self._max_attempts = settings.marketplace_webhook_max_attempts
        self._timeout = settings.marketplace_webhook_timeout_seconds

    async def deliver_due(self, *, limit: int = 200) -> DeliveryRun:
        """Attempt due events one at a time (oldest first, in order per subscription)."""
        run = DeliveryRun()
        if not self._endpoints or not self._secrets:
            return run  # not configured: events wait in the table
        for _ in range(limit):
            async with unit_of_work(self._sessionmaker) as session:
                event = (await session.execute(_due(clock.now()))).scalar_one_or_none()
                if event is None:
                    return run
                outcome = await self._attempt(session, event, run)
                run.outcomes[str(event.id)] = outcome
        return run

    async def _attempt(self, session: AsyncSession, event: MarketplaceEvent, run: DeliveryRun) -> str:
        done = set(
            (
                await session.scalars(
                    select(MarketplaceEventDelivery.endpoint).where(
                        MarketplaceEventDelivery.event_id == event.id,
                        MarketplaceEventDelivery.round == event.round,
                        MarketplaceEventDelivery.status_code >= 200,
                        MarketplaceEventDelivery.status_code < 300,
                    )
                )
            ).all()
        )
        event.attempts += 1
        body = event_body(event)
        errors: list[str] = []
        for endpoint in self._endpoints:
            if endpoint in done:
                continue
            run.endpoints_called += 1
            error = await self._post(session, event, endpoint, body)
            if error is not None:
                errors.append(f"{endpoint}: {error}")
        now = clock.now()
        if not errors:
            event.status = "delivered"
            event.delivered_at = now
            event.last_error = None
            run.delivered += 1
            return "delivered"
        event.last_error = "; ".join(errors)[:2000]
        if event.attempts >= self._max_attempts:
            event.status = "failed"
            run.failed += 1
            log.warning("marketplace event failed for good", extra={"event_id": str(event.id)})
            return "failed"
        event.next_attempt_at = now + retry_delay(event.attempts)
        run.retrying += 1
        return "retry_scheduled"

    async def _post(
        self, session: AsyncSession, event: MarketplaceEvent, endpoint: str, body: bytes
    ) -> str | None:
        # The signature's timestamp is checked against the receiver's real time.
        timestamp = int(time.time())  # wall clock
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self._secrets, timestamp),
            "Marketplace-Event-Id": str(event.id),
            "Marketplace-Event-Type": event.type,
        }
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await self._http.post(endpoint, content=body, headers=headers, timeout=self._timeout)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        session.add(
            MarketplaceEventDelivery(
                id=uuid.uuid4(),
                event_id=event.id,
                endpoint=endpoint,
                attempt=event.attempts,
                round=event.round,
                status_code=status_code,
                error=error,
                duration_ms=int((time.perf_counter() - started) * 1000),
                attempted_at=clock.now(),
            )
        )
        return error


async def replay(
    session: AsyncSession, *, event_id: uuid.UUID | None, failed: bool, since: datetime | None
) -> int:
    """Send chosen events again to every endpoint (a new round); returns how many."""
    statement = select(MarketplaceEvent).with_for_update()
    if event_id is not None:
        statement = statement.where(MarketplaceEvent.id == event_id)
    if failed:
        statement = statement.where(MarketplaceEvent.status == "failed")
    if since is not None:
        statement = statement.where(MarketplaceEvent.created_at >= since)
    events = list((await session.scalars(statement.order_by(MarketplaceEvent.seq))).all())
    now = clock.now()
    for event in events:
        event.status = "pending"
        event.round += 1
        event.attempts = 0
        event.next_attempt_at = now
        event.last_error = None
    return len(events)
