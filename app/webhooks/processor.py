"""Processing of stored Stripe events: one transaction per event, dispatched by type.

The event row is locked (SKIP LOCKED) for the transaction, so two workers never apply the same
event at once; a processed or ignored event is not applied again. A failure rolls the effects
back and is counted on the row, which stays `pending` for the retry or becomes `failed`.
"""

from __future__ import annotations

import logging

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.dunning.service import DunningService
from app.outbox.service import Outbox
from app.stripe import StripeGateway
from app.usage.service import UsageService
from app.webhooks.context import EventContext
from app.webhooks.repository import StripeEventRepository, mark_done
from app.webhooks.table import HANDLERS

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
DONE = frozenset({"processed", "ignored"})


def retry_delay(attempt: int) -> int:
    """Seconds before retry `attempt + 1`: 10 s, 40 s, 160 s, ... capped at one hour."""
    return int(min(3600, 10 * 4 ** (attempt - 1)))


class EventProcessor:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        stripe: StripeGateway,
        redis: ArqRedis | None,
        settings: Settings,
        usage: UsageService,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._stripe = stripe
        self._redis = redis
        self._settings = settings
        self._usage = usage

    async def process(self, event_id: str, *, final_attempt: bool = False, force: bool = False) -> str | None:
        """Apply the event once; returns its status, or None if it is absent or being processed.

        With `force`, an event already processed is applied again (handlers are idempotent).
        """
        event_type = "unknown"
        try:
            async with unit_of_work(self._sessionmaker) as session:
                event = await StripeEventRepository(session).lock(event_id)
                if event is None:
                    return None
                if event.status in DONE and not force:
                    return event.status
                event_type = event.type
                handler = HANDLERS.get(event.type)
                outcome = "ignored"
                if handler is not None:
                    outbox = Outbox(session, self._redis)
                    context = EventContext(
                        session=session,
                        outbox=outbox,
                        stripe=self._stripe,
                        usage=self._usage,
                        dunning=DunningService(session, outbox),
                        settings=self._settings,
                        event_id=event.id,
                        created=event.stripe_created,
                    )
                    outcome = await handler(context, event.payload["data"]["object"])
                mark_done(event, outcome)
            metrics.WEBHOOK_EVENTS.labels(event_type, outcome).inc()
            return outcome
        except Exception as exc:
            metrics.WEBHOOK_EVENTS.labels(event_type, "failed" if final_attempt else "retry").inc()
            log.warning("stripe event failed", extra={"event_id": event_id, "error": repr(exc)})
            async with unit_of_work(self._sessionmaker) as session:
                await StripeEventRepository(session).record_failure(
                    event_id, f"{type(exc).__name__}: {exc}", final=final_attempt
                )
            raise
