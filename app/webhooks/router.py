from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel

from app.db import DbSession
from app.http import error_responses
from app.webhooks.service import WebhookService

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class Received(BaseModel):
    received: bool = True


def webhook_service(request: Request, session: DbSession) -> WebhookService:
    return WebhookService(session, request.app.state.redis, request.app.state.settings.webhook_secrets)


Service = Annotated[WebhookService, Depends(webhook_service)]


@router.post(
    "/stripe",
    summary="Receive a Stripe event (signed; no JWT)",
    responses=error_responses(400),
)
async def receive_stripe_event(
    request: Request,
    service: Service,
    stripe_signature: Annotated[str | None, Header()] = None,
) -> Received:
    await service.receive(await request.body(), stripe_signature)
    return Received()
