from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import TypeAdapter, ValidationError
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from app.analytics.schemas import EarningsReport, UsageReport
from app.analytics.service import EarningsReader
from app.db import read_connection
from app.dependencies import Analytics as Service
from app.dependencies import BearerPrincipal, CreatorOrAdmin, Earnings, api_state
from app.http import Day, error_responses, query_parameters
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


_EARNINGS_TAIL = "/earnings"
_API_ID: TypeAdapter[str] = TypeAdapter(ApiId)
_DAY: TypeAdapter[date | None] = TypeAdapter(Day | None)
_JSON_HEADERS = (b"content-type", b"application/json")


class EarningsRoute(BaseRoute):
    """`GET {prefix}/apis/{api_id}/earnings` answered as the route above answers it, without
    FastAPI's routing walk and parameter resolution: its path is measured against its bare SQL
    (bench/analytics.py), and those cost a third of it. Matched ahead of every route. The same
    bearer check, the same types for `api_id`, `from` and `to` (a bad one is the same 422 naming
    it), the same reader; the declared route documents it (a test compares the two answers)."""

    def __init__(self, prefix: str) -> None:
        self._head = f"{prefix}{router.prefix.split('{', 1)[0]}"
        self.path = f"{prefix}{router.prefix}{_EARNINGS_TAIL}"  # the template metrics and logs name
        self.path_format = self.path
        self._principal = BearerPrincipal("creator", "admin")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(self._head) and path.endswith(_EARNINGS_TAIL):
                api_id = path[len(self._head) : -len(_EARNINGS_TAIL)]
                if api_id and "/" not in api_id:
                    return Match.FULL, {"path_params": {"api_id": api_id}, "route": self}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await self._principal(Request(scope, receive))
        api_id, date_from, date_to = _earnings_parameters(scope)
        resources = api_state(scope["app"]).resources
        async with read_connection(resources.engine) as connection:
            reader = EarningsReader(connection, resources.settings)
            body = await reader.report(principal, api_id, date_from, date_to)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _earnings_parameters(scope: Scope) -> tuple[str, date | None, date | None]:
    """`api_id`, `from` and `to` validated by their declared types (the last of a repeated query
    parameter counts, an empty one is invalid, as FastAPI reads them); every error at once."""
    errors: list[dict[str, Any]] = []
    api_id = scope["path_params"]["api_id"]
    try:
        api_id = _API_ID.validate_python(api_id)
    except ValidationError as exc:
        errors.extend({**e, "loc": ("path", "api_id", *e["loc"])} for e in exc.errors(include_url=False))
    date_from, date_to = query_parameters(scope, {"from": (_DAY, None), "to": (_DAY, None)}, errors)
    return api_id, date_from, date_to
