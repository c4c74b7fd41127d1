"""The ingest pool's connections: a batch is one statement, and handing the connection back
costs no second round trip (they hold no session state to reset)."""

from __future__ import annotations

import orjson

from app.config import Settings
from app.webhooks.repository import DbTimeouts, EventStore, IncomingEvent
from tests.support.billing_data import customer_created


async def test_storing_a_batch_sends_the_insert_and_nothing_else(settings: Settings) -> None:
    timeouts = DbTimeouts(connect=5, command=5, checkout=5)
    store = await EventStore.open(settings.database_url, max_size=1, timeouts=timeouts)
    sent: list[str] = []
    try:
        payloads = [customer_created() for _ in range(4)]
        events = [
            IncomingEvent(p["id"], p["type"], None, p["created"], False, orjson.dumps(p).decode())
            for p in payloads
        ]
        await store.insert_new(events[:1])  # the driver's first use: it looks up the array types
        # The pool's one connection, with every statement it is sent from now on recorded.
        async with store._pool.acquire() as connection:
            connection.add_query_logger(lambda record: sent.append(record.query))
        sent.clear()
        stored = await store.insert_new(events[1:])
        again = await store.insert_new(events[:2])
    finally:
        await store.close()
    assert stored == {p["id"] for p in payloads[1:]}
    assert again == set()
    # One statement per batch: the pool hands the connection back without RESET ALL and the rest.
    assert [query.split(maxsplit=3)[:3] for query in sent] == [["INSERT", "INTO", "stripe_events"]] * 2, sent
