from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field

from app.http import error_responses
from app.webhooks.ingest import EventIngest
from app.webhooks.repository import DbTimeouts, EventStore
from app.webhooks.service import WebhookService


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The ingest service with its own small connection pool, open while the app runs."""
    settings = app.state.settings
    timeouts = DbTimeouts(
        connect=settings.db_connect_timeout_seconds,
        command=settings.db_command_timeout_seconds,
        checkout=settings.db_checkout_timeout_seconds,
    )
    store = await EventStore.open(settings.database_url, max_size=settings.db_pool_size, timeouts=timeouts)
    ingest = EventIngest(store, app.state.redis, enqueue_timeout=settings.webhook_enqueue_timeout_seconds)
    app.state.webhooks = WebhookService(ingest, settings.webhook_secrets)
    try:
        yield
    finally:
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
    service: WebhookService = request.app.state.webhooks
    await service.receive(await request.body(), request.headers.get("stripe-signature"))
    return Response(RECEIVED, media_type="application/json")
