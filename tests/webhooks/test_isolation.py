"""A validly signed event that cannot be stored as it is gets 400 alone: its batch is kept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import StripeEvent
from app.webhooks.ingest import EventIngest, InvalidEvent
from app.webhooks.repository import DbTimeouts, EventStore, IncomingEvent
from tests.support.billing_data import customer_created
from tests.support.worker import send


async def _post(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    return await send(client, json.dumps(payload).encode())  # json: integers of any size


async def _stored_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(select(StripeEvent.id))).scalars())


@pytest.mark.parametrize(
    "bad",
    [
        customer_created(data={"object": {"id": "cus_1", "object": "customer", "name": "A\x00B"}}),
        customer_created(created=2**64),
        customer_created(created=2**63),
    ],
    ids=["nul-in-payload", "created-beyond-64-bits", "created-beyond-bigint"],
)
async def test_unstorable_event_is_400_alone_and_its_batch_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, bad: dict[str, Any]
) -> None:
    good = [customer_created() for _ in range(20)]
    responses = await asyncio.gather(*(_post(client, p) for p in [*good[:10], bad, *good[10:]]))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 10 + [400] + [200] * 10, [r.text for r in responses]
    assert responses[10].json()["code"] == "invalid_payload"
    assert await _stored_ids(engine) == {p["id"] for p in good}


async def test_a_batch_postgresql_refuses_is_stored_event_by_event(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Whatever PostgreSQL refuses (not only what the parser knows of) fails its event alone."""
    timeouts = DbTimeouts(connect=5, command=5, checkout=5)
    store = await EventStore.open(settings.database_url, max_size=2, timeouts=timeouts)
    ingest = EventIngest(store, None)
    good = [customer_created() for _ in range(5)]
    bad = customer_created(data={"object": {"id": "cus_1", "name": "A\x00B"}})
    events = [
        IncomingEvent(p["id"], p["type"], None, p["created"], False, orjson.dumps(p).decode())
        for p in [*good[:2], bad, *good[2:]]
    ]
    try:
        results = await asyncio.gather(*(ingest.submit(e) for e in events), return_exceptions=True)
        await ingest.drain()
    finally:
        await store.close()
    assert isinstance(results[2], InvalidEvent)
    assert [r for i, r in enumerate(results) if i != 2] == [True] * 5
    assert await _stored_ids(engine) == {p["id"] for p in good}


@pytest.mark.parametrize("writers", [1, 2])
async def test_a_delivery_arriving_as_the_last_writers_finish_is_still_stored(
    settings: Settings, engine: AsyncEngine, writers: int
) -> None:
    """Each delivery resubmits the moment its own answer comes back, as a client in a loop does:
    it lands while the writer that answered is finishing, and must start (or find) a writer
    rather than wait for a delivery that may never come."""
    timeouts = DbTimeouts(connect=5, command=5, checkout=5)
    store = await EventStore.open(settings.database_url, max_size=2, timeouts=timeouts)
    ingest = EventIngest(store, None, max_writers=writers)
    payloads = [customer_created() for _ in range(6 * writers)]

    async def deliver_in_turn(mine: list[dict[str, Any]]) -> list[bool]:
        return [
            await ingest.submit(
                IncomingEvent(p["id"], p["type"], None, p["created"], False, orjson.dumps(p).decode())
            )
            for p in mine
        ]

    try:
        lanes = [payloads[n::writers] for n in range(writers)]
        answers = await asyncio.wait_for(asyncio.gather(*(deliver_in_turn(lane) for lane in lanes)), 10)
        await ingest.drain()
    finally:
        await store.close()
    assert answers == [[True] * 6] * writers
    assert await _stored_ids(engine) == {p["id"] for p in payloads}
