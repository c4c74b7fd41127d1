from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Receive, Scope, Send

from app.db.packed_redis import PipelinedRedis
from app.dependencies import api_state
from app.errors import ServiceUnavailable
from app.http import error_responses
from app.webhooks.ingest import EventIngest
from app.webhooks.repository import DbTimeouts, EventStore
from app.webhooks.service import WebhookService


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The ingest service with its own small connection pool, open while the app runs."""
    state = api_state(app)
    settings = state.resources.settings
    timeouts = DbTimeouts(
        connect=settings.db_connect_timeout_seconds,
        command=settings.db_command_timeout_seconds,
        checkout=settings.db_checkout_timeout_seconds,
    )
    store = await EventStore.open(settings.database_url, max_size=settings.db_pool_size, timeouts=timeouts)
    # Its own Redis client: each batch's enqueue packed in C, written with the others of its turn
    # of the event loop, and bounded by the enqueue timeout (no checkout, no timer task per call).
    redis = PipelinedRedis(settings.redis_url, timeout=settings.webhook_enqueue_timeout_seconds)
    ingest = EventIngest(store, redis)
    state.webhooks = WebhookService(ingest, settings.webhook_secrets)
    try:
        yield
    finally:
        state.webhooks = None
        await ingest.drain()
        redis.close()
        await store.close()


router = APIRouter(prefix="/webhooks", tags=["webhooks"], lifespan=lifespan)


class Received(BaseModel):
    received: bool = Field(True, description="Always true: the event is stored")


RECEIVED = b'{"received":true}'
# The headers Response(RECEIVED, media_type="application/json") sends, in its order.
_RECEIVED_HEADERS = [(b"content-length", str(len(RECEIVED)).encode()), (b"content-type", b"application/json")]
_SIGNATURE_KEY = b"stripe-signature"


SIGNATURE_HEADER = {
    "parameters": [
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "t=<unix time>,v1=<HMAC-SHA256 hex>",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {
                    "id": "evt_1QdemoPaid",
                    "object": "event",
                    "type": "invoice.paid",
                    "created": 1764547200,
                    "data": {"object": {"id": "in_1QdemoPaid", "object": "invoice", "status": "paid"}},
                },
            }
        },
    },
}


async def _store(app: FastAPI | ASGIApp, body: bytes, signature: str | None) -> None:
    service = api_state(app).webhooks
    if service is None:
        raise ServiceUnavailable("Not accepting webhooks (starting or shutting down)")
    await service.receive(body, signature)


# Documents the endpoint (and answers it when StripeWebhookRoute is not installed).
@router.post(
    "/stripe",
    summary="Receive a Stripe event (signed; no JWT)",
    response_model=Received,
    responses=error_responses(400, 413, 503, codes={400: ("invalid_signature", "invalid_payload")}),
    openapi_extra=SIGNATURE_HEADER,
)
async def receive_stripe_event(request: Request) -> Response:
    await _store(request.app, await request.body(), request.headers.get("stripe-signature"))
    return Response(RECEIVED, media_type="application/json")


class StripeWebhookRoute(BaseRoute):
    """`POST /webhooks/stripe` answered as the declared route above answers it, without FastAPI's
    routing walk, request object and parameter resolution: Stripe waits on this path, and it is
    measured against a no-op POST of the same app (bench/webhook_ingest.py). Matched ahead of the
    declared routes; errors are raised to the same handlers (the one error format), and a test
    compares its answers with the declared route's."""

    path = path_format = f"{router.prefix}/stripe"  # the template metrics and logs name

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            return Match.FULL, {"route": self}
        return Match.NONE, {}  # another method goes on to the declared route (its 405)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        signature: str | None = None
        for name, value in scope["headers"]:
            if name == _SIGNATURE_KEY:
                signature = value.decode("latin-1")
                break
        await _store(scope["app"], parts[0] if len(parts) == 1 else b"".join(parts), signature)
        await send({"type": "http.response.start", "status": 200, "headers": list(_RECEIVED_HEADERS)})
        await send({"type": "http.response.body", "body": RECEIVED})
