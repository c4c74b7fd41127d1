from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.analytics.schemas import EarningsReport, UsageReport
from app.dependencies import Analytics as Service
from app.dependencies import CreatorOrAdmin, Earnings
from app.http import Day, error_responses
from app.plans.schemas import ApiId

router = APIRouter(prefix="/apis/{api_id}", tags=["analytics"])
ApiIdPath = Annotated[ApiId, Path(description="The marketplace's API id: 1-64 of letters, digits, - and _")]
From = Annotated[Day | None, Query(alias="from", description="First UTC day (default: 29 days before `to`)")]
To = Annotated[Day | None, Query(alias="to", description="Last UTC day, inclusive (default: today)")]


# async: a plain function would be run on a worker thread, a hop per request.


@router.get(
    "/usage",
    summary="Usage of an API: totals, daily series, per plan, top consumers (creator or admin)",
    responses=error_responses(401, 403, 404, codes={403: ("not_api_owner",)}),
    response_model_by_alias=True,
)
async def api_usage(
    api_id: ApiIdPath, principal: CreatorOrAdmin, service: Service, date_from: From = None, date_to: To = None
) -> UsageReport:
    return await service.usage(principal, api_id, date_from, date_to)


# The service writes the report's JSON itself (the schema's bytes); the schema documents it.
@router.get(
    "/earnings",
    summary="Earnings of an API per currency: gross, commission, net, by month and plan (creator or admin)",
    response_model=EarningsReport,
    responses=error_responses(401, 403, 404, codes={403: ("not_api_owner",)}),
    response_model_by_alias=True,
)
async def api_earnings(
    api_id: ApiIdPath, principal: CreatorOrAdmin, reader: Earnings, date_from: From = None, date_to: To = None
) -> Response:
    body = await reader.report(principal, api_id, date_from, date_to)
    return Response(body, media_type="application/json")
