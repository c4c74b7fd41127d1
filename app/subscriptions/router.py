from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from app.dependencies import CurrentUser, RequestKey
from app.dependencies import SubscriptionReader as Reader
from app.dependencies import Subscriptions as Service
from app.http import error_responses
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

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])
# The 409 codes of a plan change (and of its preview).
CHANGE_CONFLICTS = (
    "same_plan",
    "subscription_not_running",
    "plan_inactive",
    "already_subscribed",
    "not_synced",
)


@router.post(
    "",
    summary="Subscribe to a plan (a card, or a Stripe Checkout page with checkout=true)",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(
        401,
        402,
        404,
        409,
        502,
        codes={404: ("not_registered",), 409: ("already_subscribed", "plan_inactive", "plan_not_published")},
    ),
)
async def create_subscription(
    body: SubscriptionCreate, principal: CurrentUser, service: Service, request_key: RequestKey
) -> SubscriptionOut:
    return await service.create(principal, body, request_key=request_key)


# The two reads answer JSON the service has already written (the schema's bytes, see
# app/subscriptions/documents.py); `response_model` keeps the schema in the OpenAPI document.
@router.get(
    "",
    summary="List the caller's subscriptions, newest first",
    response_model=SubscriptionList,
    responses=error_responses(401),
)
async def list_subscriptions(
    principal: CurrentUser,
    service: Reader,
    status: SubscriptionStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    body = await service.list(principal, status=status, cursor=cursor, limit=limit)
    return Response(body, media_type="application/json")


@router.get(
    "/{subscription_id}",
    summary="Get a subscription",
    response_model=SubscriptionOut,
    responses=error_responses(401, 404),
)
async def get_subscription(subscription_id: uuid.UUID, principal: CurrentUser, service: Reader) -> Response:
    return Response(await service.get(principal, subscription_id), media_type="application/json")


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
    responses=error_responses(401, 402, 404, 409, 502, codes={409: CHANGE_CONFLICTS}),
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
    responses=error_responses(401, 404, 409, 502, codes={409: CHANGE_CONFLICTS}),
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
