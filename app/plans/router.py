from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.dependencies import CreatorOrAdmin, CurrentUser
from app.dependencies import Plans as Service
from app.http import error_responses
from app.plans.schemas import ApiId, PlanCreate, PlanList, PlanOut, PlanUpdate

router = APIRouter(prefix="/apis/{api_id}/plans", tags=["plans"])
ApiIdPath = Annotated[ApiId, Path(description="The marketplace's API id: 1-64 of letters, digits, - and _")]


@router.post(
    "",
    summary="Add a pricing plan (claims the API for its first creator)",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 502, codes={403: ("not_api_owner",), 409: ("api_unclaimed",)}),
)
async def create_plan(
    api_id: ApiIdPath, body: PlanCreate, principal: CreatorOrAdmin, service: Service
) -> PlanOut:
    return await service.create(principal, api_id, body)


@router.get("", summary="List an API's plans", responses=error_responses(401))
async def list_plans(
    api_id: ApiIdPath,
    principal: CurrentUser,
    service: Service,
    all: Annotated[bool, Query(description="Include inactive plans (owner or admin)")] = False,
) -> PlanList:
    return PlanList(plans=await service.list(principal, api_id, include_inactive=all))


@router.get("/{plan_id}", summary="Get a plan", responses=error_responses(401, 404))
async def get_plan(
    api_id: ApiIdPath, plan_id: uuid.UUID, principal: CurrentUser, service: Service
) -> PlanOut:
    return await service.get(api_id, plan_id)


@router.put(
    "/{plan_id}",
    summary="Change a plan (a new price makes a new version)",
    responses=error_responses(401, 403, 404, 502, codes={403: ("not_api_owner",)}),
)
async def update_plan(
    api_id: ApiIdPath, plan_id: uuid.UUID, body: PlanUpdate, principal: CreatorOrAdmin, service: Service
) -> PlanOut:
    return await service.update(principal, api_id, plan_id, body)


@router.delete(
    "/{plan_id}",
    summary="Deactivate a plan (existing subscriptions run on)",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, codes={403: ("not_api_owner",)}),
)
async def deactivate_plan(
    api_id: ApiIdPath, plan_id: uuid.UUID, principal: CreatorOrAdmin, service: Service
) -> Response:
    await service.deactivate(principal, api_id, plan_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
