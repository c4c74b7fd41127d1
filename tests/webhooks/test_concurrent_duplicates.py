"""A redelivery never holds its batch back: two batches holding the same events in different orders
are stored side by side (one waits for the other, nothing stored twice, no deadlock), and an event
whose job has changed its row but not committed is left out without waiting for that job."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import StripeEvent
from app.webhooks.repository import DbTimeouts, EventStore, IncomingEvent, asyncpg_dsn
from tests.support.billing_data import customer_created

_WAITING_INSERTS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO stripe_events%'"
)


async def _blocked_inserts(probe: asyncpg.Connection, count: int) -> None:
    for _ in range(500):
        if await probe.fetchval(_WAITING_INSERTS) >= count:
            return
        await asyncio.sleep(0.02)  # wall clock: polling the server
    raise AssertionError(f"{count} inserts never waited on a lock")


def _events(prefix: str, count: int) -> list[IncomingEvent]:
    payloads = [customer_created(id=f"evt_{prefix}_{n:03}") for n in range(count)]
    return [
        IncomingEvent(p["id"], p["type"], None, p["created"], False, orjson.dumps(p).decode())
        for p in payloads
    ]


async def _store(settings: Settings, *, command: float) -> EventStore:
    timeouts = DbTimeouts(connect=5, command=command, checkout=5)
    return await EventStore.open(settings.database_url, max_size=2, timeouts=timeouts)


async def _stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return sorted((await connection.execute(select(StripeEvent.id))).scalars().all())


async def test_batches_of_the_same_events_in_opposite_orders_store_each_once_without_a_deadlock(
    settings: Settings, engine: AsyncEngine
) -> None:
    events = _events("order", 20)
    middle = events[10]
    store = await _store(settings, command=10)
    holder = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    probe = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        # Another delivery's batch holds the middle event, not committed yet: both batches below
        # reach it having stored the events before it in their own order.
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "INSERT INTO stripe_events (id, type, stripe_created, livemode, payload, status, attempts, "
            "received_at) VALUES ($1, $2, $3, false, $4::jsonb, 'pending', 0, now())",
            middle.id,
            middle.type,
            middle.created,
            middle.payload,
        )
        forward = asyncio.ensure_future(store.insert_new(events))
        backward = asyncio.ensure_future(store.insert_new(events[::-1]))
        await _blocked_inserts(probe, 2)
        await holding.commit()
        stored = await asyncio.wait_for(asyncio.gather(forward, backward), 15)
    finally:
        await holder.close()
        await probe.close()
        await store.close()

    everything_but_the_middle = {e.id for e in events} - {middle.id}
    assert stored[0] | stored[1] == everything_but_the_middle
    assert not stored[0] & stored[1]
    assert await _stored_ids(engine) == sorted(e.id for e in events)


async def test_a_redelivered_event_whose_job_has_not_committed_does_not_hold_back_its_batch(
    settings: Settings, engine: AsyncEngine
) -> None:
    events = _events("busy", 6)
    busy, new = events[0], events[1:]
    store = await _store(settings, command=2)
    job = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        assert await store.insert_new([busy]) == {busy.id}
        # The event's job has changed its row and not committed yet (it waits on Stripe, or was
        # killed and its connection is not closed yet) when Stripe delivers the event again.
        processing = job.transaction()
        await processing.start()
        await job.execute("UPDATE stripe_events SET attempts = attempts + 1 WHERE id = $1", busy.id)
        stored = await store.insert_new(events)
        await processing.rollback()
    finally:
        await job.close()
        await store.close()

    assert stored == {e.id for e in new}
    assert await _stored_ids(engine) == sorted(e.id for e in events)
