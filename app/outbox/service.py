"""Intents to call the API key service, written in the caller's transaction.

A row in `outbox` is the promise; the worker's delivery job keeps it (with retries and backoff),
and a sweeper re-enqueues rows whose job was lost. Dedupe keys make each intent exist once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.unit_of_work import after_commit
from app.entitlements.cache import schedule_refresh
from app.events import types as events
from app.events.publisher import publish
from app.models import OutboxMessage, Subscription

DELIVER_JOB = "deliver_outbox_message"


def delivery_job_id(message_id: uuid.UUID, due: datetime | None = None) -> str:
    """arq job id: the first delivery's, or (with `due`) a retry's, unique per scheduled time.

    arq refuses a job id while an earlier job of that id is queued or its result is kept, so a
    retry cannot reuse the first id.
    """
    if due is None:
        return f"outbox:{message_id}"
    return f"outbox:{message_id}:{int(due.timestamp() * 1000)}"


class Outbox:
    def __init__(self, session: AsyncSession, redis: ArqRedis | None) -> None:
        self._session = session
        self._redis = redis

    async def create_api_key(self, subscription: Subscription) -> None:
        """Ask for the subscription's API key, once per subscription whatever happens after.

        The delivery job looks up the consumer (the service token's `sub`) when it runs.
        """
        await self._add(
            "create_api_key",
            f"create_api_key:{subscription.id}",
            subscription,
            {"name": f"{subscription.api_id} subscription"},
        )

    async def revoke_api_key(self, subscription: Subscription) -> None:
        """Ask for the subscription's key to be revoked (after its creation, if that is pending)."""
        await self._add("revoke_api_key", f"revoke_api_key:{subscription.id}", subscription, {})

    async def suspend_api_key(self, subscription: Subscription) -> None:
        """Ask for the subscription's key to stop working (dunning); a no-op while already suspended.

        The API key service has only create and delete: suspending revokes the key, and restoring
        issues a new one (the consumer sees a new key after a restore).
        """
        latest, count = await self._latest_toggle(subscription.id)
        if latest != "suspend_api_key":
            await self._add("suspend_api_key", f"suspend_api_key:{subscription.id}:{count}", subscription, {})
            self.refresh_entitlement(subscription)
            await self.publish_event(subscription, events.API_KEY_SUSPENDED, f"{subscription.id}:{count}")

    async def restore_api_key(self, subscription: Subscription) -> None:
        """Ask for a working key again after a suspension; a no-op unless the last intent suspended."""
        latest, count = await self._latest_toggle(subscription.id)
        if latest == "suspend_api_key":
            await self._add(
                "restore_api_key",
                f"restore_api_key:{subscription.id}:{count}",
                subscription,
                {"name": f"{subscription.api_id} subscription"},
            )
            self.refresh_entitlement(subscription)
            await self.publish_event(subscription, events.API_KEY_RESTORED, f"{subscription.id}:{count}")

    async def _latest_toggle(self, subscription_id: uuid.UUID) -> tuple[str | None, int]:
        """The latest suspend/restore intent of a subscription and how many there are.

        The count numbers the next intent's dedupe key, so suspend/restore may cycle, while two
        transactions asking for the same step at once still make one row.
        """
        statement = (
            select(OutboxMessage.kind, func.count().over())
            .where(
                OutboxMessage.subscription_id == subscription_id,
                OutboxMessage.kind.in_(("suspend_api_key", "restore_api_key")),
            )
            .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
            .limit(1)
        )
        row = (await self._session.execute(statement)).one_or_none()
        return (None, 0) if row is None else (row[0], int(row[1]))

    def refresh_entitlement(self, subscription: Subscription) -> None:
        """Refresh the gateway's cached entitlement of the subscription once this transaction commits."""
        schedule_refresh(self._session, self._redis, subscription.id)

    async def notify(
        self, subscription: Subscription, topic: str, dedupe: str, payload: dict[str, Any]
    ) -> None:
        """An outbound notification about the subscription (e.g. its trial ends), once per `dedupe`;
        delivered to the marketplace as an event."""
        await self._add("notify", f"notify:{topic}:{dedupe}", subscription, {"topic": topic, **payload})
        event_type = events.NOTIFY_EVENT_TYPES.get(topic, f"notification.{topic}")
        await self.publish_event(subscription, event_type, dedupe, payload)

    async def publish_event(
        self, subscription: Subscription, type: str, dedupe: str, payload: dict[str, Any] | None = None
    ) -> None:
        """A marketplace event about the subscription, once per (type, dedupe), sent after the commit."""
        await publish(
            self._session,
            self._redis,
            type=type,
            dedupe_key=f"{type}:{dedupe}",
            subscription_id=subscription.id,
            payload={**events.subscription_payload(subscription), **(payload or {})},
        )

    async def _add(
        self, kind: str, dedupe_key: str, subscription: Subscription, payload: dict[str, Any]
    ) -> None:
        statement = (
            insert(OutboxMessage)
            .values(
                id=uuid.uuid4(),
                kind=kind,
                dedupe_key=dedupe_key,
                subscription_id=subscription.id,
                payload=payload,
            )
            .on_conflict_do_nothing(index_elements=[OutboxMessage.dedupe_key])
            .returning(OutboxMessage.id)
        )
        message_id = (await self._session.execute(statement)).scalar_one_or_none()
        if message_id is not None and self._redis is not None:
            redis = self._redis

            async def enqueue() -> None:
                await redis.enqueue_job(DELIVER_JOB, str(message_id), _job_id=delivery_job_id(message_id))

            after_commit(self._session, enqueue)
