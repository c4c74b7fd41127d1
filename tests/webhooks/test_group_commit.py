"""Group commit under load: a batch's deliveries are answered a few at a time, so the next batch
goes out while the rest of the last one are still being answered (no lockstep)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import StripeEvent
from app.webhooks.ingest import ANSWERS_PER_TURN, EventIngest
from app.webhooks.repository import DbTimeouts, EventStore, IncomingEvent
from tests.support.billing_data import customer_created

CLIENTS = 32
ROUNDS = 4


class RecordingStore(EventStore):
    """The real store; `timeline` notes each batch written (the set of its ids) and each delivery
    answered (its id)."""

    timeline: list[frozenset[str] | str]

    async def insert_new(self, events: Sequence[IncomingEvent]) -> set[str]:
        self.timeline.append(frozenset(e.id for e in events))
        return await super().insert_new(events)


def _incoming() -> IncomingEvent:
    payload = customer_created()
    body = orjson.dumps(payload).decode()
    return IncomingEvent(payload["id"], payload["type"], None, payload["created"], False, body)


async def test_the_next_batch_is_written_while_the_last_one_is_still_being_answered(
    settings: Settings, engine: AsyncEngine
) -> None:
    timeouts = DbTimeouts(connect=5, command=5, checkout=5)
    store = await RecordingStore.open(settings.database_url, max_size=4, timeouts=timeouts)
    store.timeline = []
    ingest = EventIngest(store, None)

    async def sender() -> None:
        # As a webhook sender under load does: the next delivery the moment the last is answered.
        for _ in range(ROUNDS):
            event = _incoming()
            assert await ingest.submit(event)
            store.timeline.append(event.id)

    try:
        await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(CLIENTS))), 30)
        await ingest.drain()
    finally:
        await store.close()

    timeline = store.timeline
    answered_at = {entry: n for n, entry in enumerate(timeline) if isinstance(entry, str)}
    batches = [entry for entry in timeline if isinstance(entry, frozenset)]
    overlapping = []
    for batch in batches:
        if len(batch) <= ANSWERS_PER_TURN:
            continue
        first, last = min(answered_at[i] for i in batch), max(answered_at[i] for i in batch)
        if any(isinstance(entry, frozenset) for entry in timeline[first + 1 : last]):
            overlapping.append(batch)
    assert overlapping, [len(e) if isinstance(e, frozenset) else "answer" for e in timeline]
    async with engine.connect() as connection:
        stored = (await connection.execute(select(func.count()).select_from(StripeEvent))).scalar_one()
    assert stored == CLIENTS * ROUNDS
