from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import CurrentUser
from app.db import DbSession, ReadSession
from app.http import error_responses
from app.integrations.metering import MeteringClient
from app.outbox.service import Outbox
from app.subscriptions.schemas import (
    SubscriptionCancel,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionOut,
    SubscriptionStatus,
    SubscriptionUpgrade,
    UpgradePreview,
    UsageOut,
)
from app.subscriptions.service import SubscriptionService
from app.usage.service import UsageService

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


def _service(request: Request, session: AsyncSession) -> SubscriptionService:
    state = request.app.state
    return SubscriptionService(
        session,
        state.stripe,
        Outbox(session, state.redis),
        MeteringClient(state.http, state.settings),
        automatic_tax=state.settings.stripe_tax_enabled,
        flush_usage=UsageService(state.sessionmaker, state.stripe, state.settings, state.http).flush,
    )


def subscription_service(request: Request, session: DbSession) -> SubscriptionService:
    return _service(request, session)


def subscription_reader(request: Request, session: ReadSession) -> SubscriptionService:
    return _service(request, session)


Service = Annotated[SubscriptionService, Depends(subscription_service)]
Reader = Annotated[SubscriptionService, Depends(subscription_reader)]


@router.post(
    "",
    summary="Subscribe to a plan (a card, or a Stripe Checkout page with checkout=true)",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 402, 404, 409, 502),
)
async def create_subscription(
    body: SubscriptionCreate, principal: CurrentUser, service: Service
) -> SubscriptionOut:
    return await service.create(principal, body)


@router.get("", summary="List the caller's subscriptions, newest first", responses=error_responses(401))
async def list_subscriptions(
    principal: CurrentUser,
    service: Reader,
    status: SubscriptionStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SubscriptionList:
    return await service.list(principal, status=status, cursor=cursor, limit=limit)


@router.get("/{subscription_id}", summary="Get a subscription", responses=error_responses(401, 404))
async def get_subscription(
    subscription_id: uuid.UUID, principal: CurrentUser, service: Reader
) -> SubscriptionOut:
    return await service.get(principal, subscription_id)


@router.put(
    "/{subscription_id}/cancel",
    summary="Cancel at the period's end, or at once with immediately=true (repeatable)",
    responses=error_responses(401, 404, 502),
)
async def cancel_subscription(
    subscription_id: uuid.UUID,
    principal: CurrentUser,
    service: Service,
    body: Annotated[SubscriptionCancel | None, Body()] = None,
) -> SubscriptionOut:
    immediately = body.immediately if body is not None else False
    return await service.cancel(principal, subscription_id, immediately=immediately)


@router.put(
    "/{subscription_id}/upgrade",
    summary="Change to another plan of the same API (prorated)",
    responses=error_responses(401, 402, 404, 409, 502),
)
async def upgrade_subscription(
    subscription_id: uuid.UUID, body: SubscriptionUpgrade, principal: CurrentUser, service: Service
) -> SubscriptionOut:
    return await service.upgrade(
        principal, subscription_id, body.new_pricing_plan_id, proration_date=body.proration_date
    )


@router.get(
    "/{subscription_id}/upgrade/preview",
    summary="The prorated invoice a plan change would make, before making it",
    responses=error_responses(401, 404, 409, 502),
)
async def preview_upgrade(
    subscription_id: uuid.UUID,
    new_pricing_plan_id: uuid.UUID,
    principal: CurrentUser,
    service: Service,
) -> UpgradePreview:
    return await service.preview_upgrade(principal, subscription_id, new_pricing_plan_id)


@router.get(
    "/{subscription_id}/usage",
    summary="Calls in the current period against the plan's limit",
    responses=error_responses(401, 404),
)
async def subscription_usage(
    subscription_id: uuid.UUID, principal: CurrentUser, service: Service
) -> UsageOut:
    return await service.usage(principal, subscription_id)
