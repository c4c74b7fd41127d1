"""Webhook ingest: verify, store, hand over to the worker. Processing lives in processor.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import after_commit
from app.errors import BadRequest
from app.webhooks.repository import StripeEventRepository
from app.webhooks.signature import verify_signature

PROCESS_JOB = "process_stripe_event"


def event_job_id(event_id: str) -> str:
    return f"stripe:{event_id}"


class InvalidEvent(BadRequest):
    code = "invalid_payload"


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
    if not isinstance(created, int) or isinstance(created, bool):
        raise InvalidEvent("The event has no valid created timestamp")
    if not isinstance(event.get("data"), dict) or not isinstance(event["data"].get("object"), dict):
        raise InvalidEvent("The event has no data.object")
    return event


class WebhookService:
    def __init__(self, session: AsyncSession, redis: ArqRedis | None, secrets: Sequence[str]) -> None:
        self._session = session
        self._repo = StripeEventRepository(session)
        self._redis = redis
        self._secrets = secrets

    async def receive(self, body: bytes, signature: str | None) -> bool:
        """Verify and store a Stripe event, and enqueue its processing once stored.

        Returns whether the event was new. The job is enqueued after the commit; if Redis is
        down the event stays `pending` and the sweeper enqueues it later.
        """
        verify_signature(body, signature, self._secrets, now=int(time.time()))
        event = parse_event(body)
        api_version = event.get("api_version")
        stored = await self._repo.insert_if_absent(
            event_id=event["id"],
            event_type=event["type"],
            api_version=api_version if isinstance(api_version, str) else None,
            created=event["created"],
            livemode=bool(event.get("livemode")),
            payload=body.decode(),
        )
        if stored and self._redis is not None:
            redis, event_id = self._redis, event["id"]

            async def enqueue() -> None:
                await redis.enqueue_job(PROCESS_JOB, event_id, _job_id=event_job_id(event_id))

            after_commit(self._session, enqueue)
        return stored
