"""Group commit for webhook ingest: concurrent deliveries share one INSERT and one Redis trip.

Each delivery waits until its own row has committed (and its job was handed to Redis, or
Redis failed), so the 200 still means "stored". There is no timer: a batch is whatever arrived
while earlier batches were being written (up to MAX_WRITERS at once), so a lone event goes out
at once; a batch's deliveries are answered a few per turn of the event loop (ANSWERS_PER_TURN).
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.db.packed_redis import PipelinedRedis
from app.db.redis import enqueue_unique_many
from app.errors import BadRequest, ServiceUnavailable
from app.webhooks.repository import EventStore, IncomingEvent, UnstorableEvent

log = logging.getLogger(__name__)

PROCESS_JOB = "process_stripe_event"
MAX_BATCH = 500
# A writer answers this many deliveries, then lets the event loop run before answering more.
# Answered all at once, a batch's deliveries resume together, their clients' next deliveries
# arrive together and form one batch, and the whole process waits on PostgreSQL with nothing to
# do (lockstep: 14% of a loaded process's time idle in bench/webhook_ingest.py). Answered a few
# at a time, the first answers' follow-ups go out as a batch while the rest are still being
# answered, so the database's time overlaps the process's work (2% idle).
ANSWERS_PER_TURN = 8
# Batches in flight at once, so a batch waiting on PostgreSQL or Redis does not hold up the next.
MAX_WRITERS = 2
# After Redis fails or stalls, ingest skips it this long (events stay `pending` for the sweeper).
REDIS_BACKOFF_SECONDS = 2.0


class InvalidEvent(BadRequest):
    code = "invalid_payload"


def event_job_id(event_id: str) -> str:
    return f"stripe:{event_id}"


class EventIngest:
    def __init__(
        self,
        store: EventStore,
        redis: PipelinedRedis | None,
        *,
        max_writers: int = MAX_WRITERS,
    ) -> None:
        """`redis` bounds each call by its own timeout (the webhook's enqueue timeout)."""
        self._store = store
        self._redis = redis
        self._max_writers = max_writers
        self._redis_retry_at = 0.0  # after a failed enqueue, Redis is left alone until then
        self._waiting: list[tuple[IncomingEvent, asyncio.Future[bool]]] = []
        self._writers: set[asyncio.Task[None]] = set()
        # Writers still looking at `_waiting`: one that has found it empty is no longer counted,
        # though its task is not done yet (a delivery arriving then starts a writer of its own).
        self._writing = 0

    async def submit(self, event: IncomingEvent) -> bool:
        """Store the event and enqueue its job; True if this delivery stored it first."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        if self._writing < self._max_writers:
            self._writing += 1
            writer = asyncio.create_task(self._write())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        # Not shielded: a delivery cancelled while waiting only cancels its own future (the
        # writer skips futures already done); its event is stored with the batch all the same.
        return await future

    async def drain(self) -> None:
        """Wait for the batches in flight (at shutdown)."""
        if self._writers:
            await asyncio.gather(*self._writers)

    async def _write(self) -> None:
        try:
            await self._write_batches()
        finally:
            # Nothing awaited between the loop finding `_waiting` empty and this: no delivery can
            # have been added to it meanwhile counting on this writer.
            self._writing -= 1

    async def _write_batches(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                stored = await self._insert(batch)
            except Exception as exc:
                log.exception("could not store stripe events", extra={"count": len(batch)})
                failure = ServiceUnavailable("The event could not be stored; Stripe will send it again")
                failure.__cause__ = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            await self._enqueue(sorted(stored))
            claimed: set[str] = set()
            for answered, (event, future) in enumerate(batch, 1):
                first = event.id in stored and event.id not in claimed
                claimed.add(event.id)
                if not future.done():
                    future.set_result(first)
                if answered % ANSWERS_PER_TURN == 0 and answered < len(batch):
                    await asyncio.sleep(0)  # one turn of the loop: the answered deliveries resume

    async def _insert(self, batch: list[tuple[IncomingEvent, asyncio.Future[bool]]]) -> set[str]:
        """Store the batch; if PostgreSQL refuses a value, store its events one by one instead, so
        only the events that cannot be stored are refused (400) and the others are kept."""
        try:
            return await self._store.insert_new([event for event, _ in batch])
        except UnstorableEvent:
            if len(batch) == 1:
                event, future = batch[0]
                log.warning("stripe event cannot be stored", extra={"event_id": event.id})
                if not future.done():
                    future.set_exception(InvalidEvent("The event cannot be stored as it is"))
                return set()
        stored: set[str] = set()
        for entry in batch:
            stored |= await self._insert([entry])
        return stored

    async def _enqueue(self, event_ids: list[str]) -> None:
        if not event_ids or self._redis is None:
            return
        if time.monotonic() < self._redis_retry_at:  # wall clock: a back-off, not business time
            return  # Redis just failed: the batches behind do not wait on it too; the sweeper enqueues
        jobs = [(event_job_id(i), (i,)) for i in event_ids]
        try:
            # Bounded by the client's timeout: while Redis stalls the webhook is still answered.
            await enqueue_unique_many(self._redis, PROCESS_JOB, jobs)
        except Exception:
            self._redis_retry_at = time.monotonic() + REDIS_BACKOFF_SECONDS  # wall clock
            # The events are stored and `pending`: the sweeper enqueues them later.
            log.warning(
                "redis unavailable; pending events wait for the sweeper", extra={"count": len(event_ids)}
            )
