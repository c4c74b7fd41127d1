"""The gateway's API (service token): check, track, snapshot; and the consumer's spend cap."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from starlette.background import BackgroundTask

from app.dependencies import CurrentUser, GatewayCaller, ReadSession, SpendCaps, api_state
from app.dependencies import Entitlements as Service
from app.entitlements.schemas import (
    CHECK_REQUEST_BODY,
    CheckResult,
    EntitlementList,
    SpendCapOut,
    SpendCapUpdate,
    TrackRequest,
    TrackResponse,
    parse_check_request,
)
from app.entitlements.service import Alert, publish_alerts
from app.errors import InvalidField
from app.http import error_responses
from app.plans.schemas import ApiId

JSON = "application/json"
router = APIRouter(prefix="/entitlements", tags=["entitlements"], dependencies=[GatewayCaller])
spend_cap_router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])
# The gateway routes' own codes beyond the defaults: a wrong service token; counters Redis cannot
# serve (a check answers by the Redis-down policy instead).
TOKEN_CODES = {401: ("invalid_service_token",)}
GATEWAY_CODES = {**TOKEN_CODES, 503: ("counters_unavailable",)}


def _send_alerts(request: Request, background: BackgroundTasks, alerts: list[Alert]) -> None:
    if alerts:
        resources = api_state(request.app).resources
        background.add_task(publish_alerts, resources.sessionmaker, resources.redis, alerts)


# The hot path answers JSON it serializes once (orjson, in the schema's shape); `response_model`
# still documents the shape. The check reads its own body (a lean parse, the model for anything
# unusual) and takes no dependency but the service token: each would cost every call.
@router.post(
    "/check",
    summary="May this key (or subscription) call this API now? Optionally count the calls",
    response_model=CheckResult,
    responses=error_responses(401, codes=TOKEN_CODES),
    openapi_extra=CHECK_REQUEST_BODY,
)
async def check(request: Request) -> Response:
    body = parse_check_request(await request.body())
    state = api_state(request.app)
    result, alerts = await state.entitlements.check(body)
    background = None
    if alerts:
        resources = state.resources
        background = BackgroundTask(publish_alerts, resources.sessionmaker, resources.redis, alerts)
    return Response(result.json(), media_type=JSON, background=background)


@router.post(
    "/track",
    summary="Count calls the gateway let through, in a batch (counted whatever the limits)",
    response_model=TrackResponse,
    responses=error_responses(401, 503, codes=GATEWAY_CODES),
)
async def track(
    body: TrackRequest, service: Service, request: Request, background: BackgroundTasks
) -> Response:
    result, alerts = await service.track(body)
    _send_alerts(request, background, alerts)
    return Response(result.json(), media_type=JSON)


@router.get(
    "/snapshot",
    summary="Live subscriptions' entitlements, periods, limits and counts (to warm a gateway cache)",
    responses=error_responses(401, 503, codes=GATEWAY_CODES),
)
async def snapshot(
    service: Service,
    session: ReadSession,
    api_id: Annotated[ApiId | None, Query(description="Only this API's subscriptions")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size, 1-500 (default 100)")] = 100,
) -> EntitlementList:
    after: uuid.UUID | None = None
    if cursor is not None:
        try:
            after = uuid.UUID(cursor)
        except ValueError:
            raise InvalidField("cursor", "not a cursor from a previous page") from None
    return await service.snapshot_page(session, api_id=api_id, after=after, limit=limit)


@spend_cap_router.put(
    "/{subscription_id}/spend-cap",
    summary="Set or clear the monthly cap on pay-per-use and overage spend",
    responses=error_responses(401, 404),
)
async def set_spend_cap(
    subscription_id: uuid.UUID,
    body: SpendCapUpdate,
    principal: CurrentUser,
    service: SpendCaps,
) -> SpendCapOut:
    return await service.set_cap(principal, subscription_id, body.monthly_spend_cap)
