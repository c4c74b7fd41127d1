from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.consumers.schemas import ConsumerOut, PortalSessionCreate, PortalSessionOut
from app.dependencies import Consumers as Service
from app.dependencies import CurrentUser
from app.http import error_responses
from app.models import Consumer

router = APIRouter(prefix="/consumers", tags=["consumers"])


def _out(consumer: Consumer) -> ConsumerOut:
    return ConsumerOut(
        consumer_id=consumer.id,
        stripe_customer_id=consumer.stripe_customer_id,
        email=consumer.email,
        created_at=consumer.created_at,
    )


@router.post(
    "/register",
    summary="Register the caller as a consumer (idempotent)",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": ConsumerOut, "description": "Already registered"}, **error_responses(401, 502)},
)
async def register_consumer(principal: CurrentUser, service: Service, response: Response) -> ConsumerOut:
    consumer, created = await service.register(principal)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(consumer)


@router.post(
    "/portal-session",
    summary="A Stripe billing-portal URL for the caller",
    responses=error_responses(401, 404, 502, codes={404: ("not_registered",)}),
)
async def create_portal_session(
    body: PortalSessionCreate, principal: CurrentUser, service: Service
) -> PortalSessionOut:
    return PortalSessionOut(url=await service.create_portal_session(principal, str(body.return_url)))


@router.get(
    "/me",
    summary="The caller's own consumer",
    responses=error_responses(401, 404, codes={404: ("not_registered",)}),
)
async def get_own_consumer(principal: CurrentUser, service: Service) -> ConsumerOut:
    return _out(await service.require_own(principal))


@router.get(
    "/{consumer_id}", summary="Get a consumer (own, or any for admins)", responses=error_responses(401, 404)
)
async def get_consumer(consumer_id: uuid.UUID, principal: CurrentUser, service: Service) -> ConsumerOut:
    return _out(await service.get(principal, consumer_id))
