"""Webhook ingest: verify, store, hand over to the worker. Processing lives in processor.py."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from app.webhooks.ingest import EventIngest, InvalidEvent
from app.webhooks.repository import IncomingEvent
from app.webhooks.signature import verify_signature

_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def parse_event(body: bytes) -> dict[str, Any]:
    """The event's JSON, with the fields we store checked; InvalidEvent otherwise."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEvent("The body is not valid JSON") from None
    if not isinstance(event, dict):
        raise InvalidEvent("The body is not a Stripe event")
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        raise InvalidEvent("The event has no valid id")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 128:
        raise InvalidEvent("The event has no valid type")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created < 2**63:
        raise InvalidEvent("The event has no valid created timestamp")
    # PostgreSQL's jsonb cannot hold a NUL character (an escaped \u0000, not an escaped backslash).
    if b"\\u0000" in body and _ESCAPED_NUL.search(body):
        raise InvalidEvent("The event contains a NUL character")
    if not isinstance(event.get("data"), dict) or not isinstance(event["data"].get("object"), dict):
        raise InvalidEvent("The event has no data.object")
    return event


class WebhookService:
    def __init__(self, ingest: EventIngest, secrets: Sequence[str]) -> None:
        self._ingest = ingest
        self._secrets = secrets

    async def receive(self, body: bytes, signature: str | None) -> bool:
        """Verify and store a Stripe event, then enqueue its processing; True if it was new.

        The row has committed before the job is enqueued and before this returns. If Redis is
        down the event stays `pending` and the sweeper enqueues it later: still a success.
        """
        # Stripe signs with the wall clock, even for events of a test clock.
        verify_signature(body, signature, self._secrets, now=int(time.time()))  # wall clock
        event = parse_event(body)
        api_version = event.get("api_version")
        return await self._ingest.submit(
            IncomingEvent(
                id=event["id"],
                type=event["type"],
                api_version=api_version if isinstance(api_version, str) else None,
                created=event["created"],
                livemode=bool(event.get("livemode")),
                payload=body.decode(),
            )
        )
