from __future__ import annotations

from fastapi import APIRouter

from app.creators.schemas import ConnectAccountOut, ConnectOnboardingIn, ConnectOnboardingOut
from app.dependencies import Connect as Service
from app.dependencies import CreatorOrAdmin
from app.http import error_responses

router = APIRouter(prefix="/creators", tags=["creators"])


@router.post(
    "/connect",
    summary="Start or resume Stripe Connect onboarding: returns the onboarding link",
    responses=error_responses(401, 403, 502),
)
async def start_connect_onboarding(
    body: ConnectOnboardingIn, principal: CreatorOrAdmin, service: Service
) -> ConnectOnboardingOut:
    return await service.start_onboarding(principal, body)


@router.get(
    "/connect",
    summary="The caller's Stripe Connect account status",
    responses=error_responses(401, 403, 502),
)
async def connect_status(principal: CreatorOrAdmin, service: Service) -> ConnectAccountOut:
    return await service.status(principal)
