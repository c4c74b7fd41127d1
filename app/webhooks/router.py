from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field

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
    ingest = EventIngest(
        store, state.resources.redis, enqueue_timeout=settings.webhook_enqueue_timeout_seconds
    )
    state.webhooks = WebhookService(ingest, settings.webhook_secrets)
    try:
        yield
    finally:
        state.webhooks = None
        await ingest.drain()
        await store.close()


router = APIRouter(prefix="/webhooks", tags=["webhooks"], lifespan=lifespan)


class Received(BaseModel):
    received: bool = Field(True, description="Always true: the event is stored")


RECEIVED = b'{"received":true}'


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


# The hot path: no dependencies; the raw body is needed as bytes for the signature anyway.
@router.post(
    "/stripe",
    summary="Receive a Stripe event (signed; no JWT)",
    response_model=Received,
    responses=error_responses(400, 413, 503, codes={400: ("invalid_signature", "invalid_payload")}),
    openapi_extra=SIGNATURE_HEADER,
)
async def receive_stripe_event(request: Request) -> Response:
    service = api_state(request.app).webhooks
    if service is None:
        raise ServiceUnavailable("Not accepting webhooks (starting or shutting down)")
    await service.receive(await request.body(), request.headers.get("stripe-signature"))
    return Response(RECEIVED, media_type="application/json")
