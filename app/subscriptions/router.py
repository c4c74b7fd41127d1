from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, status
from pydantic import Field, StringConstraints, TypeAdapter
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from app.db import read_connection
from app.dependencies import BearerPrincipal, CurrentUser, RequestKey, api_state
from app.dependencies import SubscriptionReader as Reader
from app.dependencies import Subscriptions as Service
from app.http import error_responses, query_parameters
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
from app.subscriptions.service import subscription_page

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


# The list's query parameters as declared above: their types and their defaults.
_LIST_QUERY: dict[str, tuple[TypeAdapter[Any], Any]] = {
    "status": (TypeAdapter(SubscriptionStatus), None),
    "cursor": (TypeAdapter(Annotated[str, StringConstraints(max_length=200)]), None),
    "limit": (TypeAdapter(Annotated[int, Field(ge=1, le=100)]), 20),
}
_JSON_HEADERS = (b"content-type", b"application/json")


class SubscriptionListRoute(BaseRoute):
    """`GET {prefix}/subscriptions` answered as `list_subscriptions` answers it, without FastAPI's
    routing walk and parameter resolution, and on a pooled read connection instead of a session
    and the service's collaborators: the hottest read, measured against a hello route of the same
    app (bench/read_path.py). Matched ahead of the declared routes; the same bearer check (the
    token cache), the same query types (a bad one is the same 422 naming it), the same page
    (`subscription_page`); the declared route documents it (a test compares the two answers)."""

    def __init__(self, prefix: str) -> None:
        self.path = self.path_format = f"{prefix}{router.prefix}"  # the template metrics and logs name
        self._principal = BearerPrincipal()

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == self.path:
            return Match.FULL, {"route": self}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await self._principal(Request(scope, receive))
        state, cursor, limit = query_parameters(scope, _LIST_QUERY)
        async with read_connection(api_state(scope["app"]).resources.engine) as connection:
            body = await subscription_page(connection, principal, status=state, cursor=cursor, limit=limit)
        headers = [(b"content-length", str(len(body)).encode()), _JSON_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
