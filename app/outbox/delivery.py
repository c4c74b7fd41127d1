"""Delivery of outbox messages to the API key service, with retries, ordering and a sweeper.

One attempt runs in one transaction that holds the message row (`FOR UPDATE SKIP LOCKED`), so two
workers never deliver the same message at once and a finished message is never delivered again.
Messages of one subscription are delivered in the order they were written: a revoke whose create
is still pending waits for it. A failure is stored on the row (attempts, last_error) and retried
with exponential backoff and jitter; after `outbox_max_attempts` (or at once for an error that
cannot succeed later) the row is `failed`.

Keys are never doubled by us: create is a no-op once `api_key_id` is set. One window remains, as
the contract gives no way to look a key up: if the service creates a key and we never learn its
id (our process dies, or the answer times out after the service acted), a later attempt creates
a second key. We narrow it: the create carries an `Idempotency-Key` (the message's dedupe key)
that a service honouring it uses to dedupe; a timed-out create is marked `[ambiguous]` in
last_error; and a key we received but could not store (our commit failed) is deleted again
(unless a re-read shows the commit applied after all).

Suspend and restore: the contract has only create and delete, so a suspension revokes the key
(`api_key_suspended` = true, `api_key_id` keeps the revoked key's id) and a restore issues a new
key (a new secret for the consumer). Revocation at cancellation also keeps `api_key_id`.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from arq.connections import ArqRedis
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.integrations.apikey import ApiKeyClient, ApiKeyServiceError
from app.models import Consumer, OutboxMessage, Subscription
from app.models.outbox import API_KEY_KINDS
from app.models.subscription import TERMINAL
from app.outbox.service import DELIVER_JOB, delivery_job_id

log = logging.getLogger(__name__)

Outcome = Literal[
    "done", "retry_scheduled", "failed", "waiting", "locked", "not_due", "finished", "missing", "not_ours"
]
# arq may start a deferred job a little before its score; tolerate that much.
EARLY_SLACK = timedelta(seconds=2)
# A message waiting for an older one of its subscription looks again this long after that one's turn.
WAIT_STEP = timedelta(seconds=1)
# The sweeper re-enqueues pending rows due for longer than this (their job was lost).
SWEEP_GRACE = timedelta(seconds=60)
SWEEP_BATCH = 500
_jitter = secrets.SystemRandom()


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    """Exponential backoff with equal jitter: half the step fixed, half random."""
    step = min(settings.outbox_retry_max_seconds, settings.outbox_retry_base_seconds * 2 ** (attempts - 1))
    return timedelta(seconds=step / 2 + _jitter.uniform(0, step / 2))


@dataclass
class _Attempt:
    """What one attempt leaves for after its transaction: jobs to enqueue, keys to undo on failure."""

    enqueue: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)
    issued: list[tuple[str, uuid.UUID, str]] = field(default_factory=list)  # user, subscription, key


Handler = Callable[[OutboxMessage, Subscription, str, _Attempt], Awaitable[str | None]]


class OutboxDelivery:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keys: ApiKeyClient,
        settings: Settings,
        redis: ArqRedis | None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._keys = keys
        self._settings = settings
        self._redis = redis
        self._handlers: dict[str, Handler] = {
            "create_api_key": self._create,
            "restore_api_key": self._restore,
            "revoke_api_key": self._revoke,
            "suspend_api_key": self._suspend,
        }

    async def deliver(self, message_id: uuid.UUID) -> Outcome:
        """Make one attempt at a message; safe to call any number of times, from any worker."""
        attempt = _Attempt()
        try:
            async with unit_of_work(self._sessionmaker) as session:
                outcome = await self._attempt(session, message_id, attempt)
        except Exception:
            await self._undo_issued(attempt)
            raise
        for follower_id, due in attempt.enqueue:
            await self._enqueue(follower_id, due)
        return outcome

    async def sweep(self) -> int:
        """Re-enqueue pending messages whose job was lost (Redis restarted, enqueue failed)."""
        now = clock.now()
        async with unit_of_work(self._sessionmaker) as session:
            statement = (
                select(OutboxMessage)
                .where(
                    OutboxMessage.status == "pending",
                    OutboxMessage.kind.in_(API_KEY_KINDS),
                    OutboxMessage.next_attempt_at <= now - SWEEP_GRACE,
                )
                .order_by(OutboxMessage.next_attempt_at)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
            stale = list((await session.scalars(statement)).all())
            for message in stale:
                message.next_attempt_at = now  # not stale again before another grace period
        for message in stale:
            await self._enqueue(message.id, now)
        if stale:
            log.info("re-enqueued outbox messages", extra={"count": len(stale)})
        return len(stale)

    async def _attempt(self, session: AsyncSession, message_id: uuid.UUID, attempt: _Attempt) -> Outcome:
        message = await session.scalar(
            select(OutboxMessage).where(OutboxMessage.id == message_id).with_for_update(skip_locked=True)
        )
        if message is None:
            exists = await session.scalar(select(OutboxMessage.id).where(OutboxMessage.id == message_id))
            return "missing" if exists is None else "locked"
        if message.status != "pending":
            return "finished"
        handler = self._handlers.get(message.kind)
        if handler is None:
            return "not_ours"  # e.g. a `notify` record: no sibling call to make
        now = clock.now()
        if message.next_attempt_at > now + EARLY_SLACK:
            return "not_due"
        if await self._wait_for_older(session, message, now, attempt):
            return "waiting"
        row = (
            await session.execute(
                select(Subscription, Consumer.user_id)
                .join(Consumer, Consumer.id == Subscription.consumer_id)
                .where(Subscription.id == message.subscription_id)
            )
        ).one_or_none()
        message.attempts += 1
        if row is None:
            return self._fail(message, "subscription not found", now)
        subscription, user_id = row
        try:
            note = await handler(message, subscription, user_id, attempt)
        except ApiKeyServiceError as exc:
            return self._record_failure(message, exc, now, attempt)
        message.status = "done"
        message.processed_at = now
        message.last_error = note
        await self._hurry_next(session, message, now, attempt)
        return "done"

    async def _wait_for_older(
        self, session: AsyncSession, message: OutboxMessage, now: datetime, attempt: _Attempt
    ) -> bool:
        """Postpone `message` while an older message of its subscription is pending."""
        if message.subscription_id is None:
            return False
        older = await session.scalar(
            select(OutboxMessage.next_attempt_at)
            .where(
                OutboxMessage.subscription_id == message.subscription_id,
                OutboxMessage.status == "pending",
                OutboxMessage.kind.in_(API_KEY_KINDS),
                or_(
                    OutboxMessage.created_at < message.created_at,
                    and_(OutboxMessage.created_at == message.created_at, OutboxMessage.id < message.id),
                ),
            )
            .order_by(OutboxMessage.next_attempt_at.desc())
            .limit(1)
        )
        if older is None:
            return False
        message.next_attempt_at = max(older, now) + WAIT_STEP
        attempt.enqueue.append((message.id, message.next_attempt_at))
        return True

    async def _hurry_next(
        self, session: AsyncSession, message: OutboxMessage, now: datetime, attempt: _Attempt
    ) -> None:
        """Make the next waiting message of the subscription due now, instead of after its wait."""
        follower = await session.scalar(
            update(OutboxMessage)
            .where(
                OutboxMessage.id
                == select(OutboxMessage.id)
                .where(
                    OutboxMessage.subscription_id == message.subscription_id,
                    OutboxMessage.status == "pending",
                    OutboxMessage.kind.in_(API_KEY_KINDS),
                    OutboxMessage.id != message.id,
                )
                .order_by(OutboxMessage.created_at, OutboxMessage.id)
                .limit(1)
                .scalar_subquery()
            )
            .values(next_attempt_at=now)
            .returning(OutboxMessage.id)
        )
        if follower is not None:
            attempt.enqueue.append((follower, now))

    def _record_failure(
        self, message: OutboxMessage, exc: ApiKeyServiceError, now: datetime, attempt: _Attempt
    ) -> Outcome:
        error = ("[ambiguous] " if exc.ambiguous else "") + exc.message
        if not exc.retryable or message.attempts >= self._settings.outbox_max_attempts:
            return self._fail(message, error, now)
        message.last_error = error[:2000]
        message.next_attempt_at = now + retry_delay(message.attempts, self._settings)
        attempt.enqueue.append((message.id, message.next_attempt_at))
        log.warning(
            "outbox delivery failed, will retry",
            extra={"message_id": str(message.id), "attempts": message.attempts, "error": error[:300]},
        )
        return "retry_scheduled"

    def _fail(self, message: OutboxMessage, error: str, now: datetime) -> Outcome:
        message.status = "failed"
        message.processed_at = now
        message.last_error = error[:2000]
        log.error(
            "outbox delivery failed for good",
            extra={"message_id": str(message.id), "kind": message.kind, "error": error[:300]},
        )
        return "failed"

    async def _create(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt
    ) -> str | None:
        if subscription.api_key_id is not None:
            return "key already issued"
        return await self._issue_while_live(
            message,
            subscription,
            user_id,
            attempt,
            "skipped: the subscription ended before its key was issued",
        )

    async def _restore(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt
    ) -> str | None:
        if not subscription.api_key_suspended:
            return "key not suspended"
        return await self._issue_while_live(
            message, subscription, user_id, attempt, "skipped: the subscription has ended"
        )

    async def _issue_while_live(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt, ended: str
    ) -> str | None:
        """Issue the key unless the subscription has ended (then `ended` is the message's note)."""
        if subscription.status in TERMINAL:
            return ended
        await self._issue(message, subscription, user_id, attempt)
        return None

    async def _issue(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt
    ) -> None:
        key = await self._keys.create_key(
            user_id=user_id,
            name=str(message.payload.get("name") or f"{subscription.api_id} subscription"),
            subscription_id=str(subscription.id),
            idempotency_key=message.dedupe_key,
        )
        attempt.issued.append((user_id, subscription.id, key.id))
        subscription.api_key_id = key.id
        subscription.api_key_suspended = False

    async def _revoke(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt
    ) -> str | None:
        if subscription.api_key_id is None:
            return "no key to revoke"
        if subscription.api_key_suspended:
            return "key already revoked by its suspension"
        if not await self._keys.delete_key(user_id=user_id, key_id=subscription.api_key_id):
            return "key unknown to the API key service (404)"
        return None

    async def _suspend(
        self, message: OutboxMessage, subscription: Subscription, user_id: str, attempt: _Attempt
    ) -> str | None:
        if subscription.api_key_id is None:
            return "no key to suspend"
        if subscription.api_key_suspended:
            return "key already suspended"
        found = await self._keys.delete_key(user_id=user_id, key_id=subscription.api_key_id)
        subscription.api_key_suspended = True
        return None if found else "key unknown to the API key service (404)"

    async def _undo_issued(self, attempt: _Attempt) -> None:
        """The attempt failed after the service issued a key: delete it, or the retry would double it.

        Only once the store confirms the key is not ours: a COMMIT whose answer was lost may have
        applied, and deleting a stored key would leave the consumer without a working one.
        """
        for user_id, subscription_id, key_id in attempt.issued:
            try:
                async with self._sessionmaker() as session:
                    stored = await session.scalar(
                        select(Subscription.api_key_id).where(Subscription.id == subscription_id)
                    )
            except Exception:
                log.exception("cannot tell whether an issued key was stored; kept", extra={"key_id": key_id})
                continue
            if stored == key_id:
                continue
            try:
                await self._keys.delete_key(user_id=user_id, key_id=key_id)
            except ApiKeyServiceError:
                log.exception("could not delete a key issued in a failed attempt", extra={"key_id": key_id})

    async def _enqueue(self, message_id: uuid.UUID, due: datetime) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.enqueue_job(
                DELIVER_JOB, str(message_id), _job_id=delivery_job_id(message_id, due), _defer_until=due
            )
        except Exception:
            # The row stays pending and due; the sweeper enqueues it again.
            log.exception("could not enqueue outbox delivery", extra={"message_id": str(message_id)})
