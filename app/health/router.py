"""Liveness, readiness and metrics: no auth, no session dependency."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app import metrics
from app.dependencies import running_state
from app.http import ErrorBody, error_response
from app.resources import Resources

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_SECONDS = 1.0


@router.get("/health", summary="The process is alive (touches nothing)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _database_ok(resources: Resources) -> bool:
    async with resources.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return True


async def _redis_ok(resources: Resources) -> bool:
    return bool(await resources.redis.ping())


async def _check(probe: asyncio.Future[bool] | asyncio.Task[bool]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except Exception:
        return "unavailable"
    return "ok"


@router.get(
    "/ready",
    summary="The database and Redis are reachable",
    responses={503: {"model": ErrorBody, "description": "Not ready; `code`: `not_ready`, `draining`"}},
)
async def ready(request: Request) -> JSONResponse:
    state = running_state(request.app)
    if state is None or state.draining:
        return error_response(request, 503, "draining", "Shutting down")
    resources = state.resources
    database, redis = await asyncio.gather(
        _check(asyncio.ensure_future(_database_ok(resources))),
        _check(asyncio.ensure_future(_redis_ok(resources))),
    )
    checks = {"database": database, "redis": redis}
    if database == "ok" and redis == "ok":
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, state in checks.items() if state != "ok")
    return error_response(request, 503, "not_ready", f"Not ready: {failing} unreachable")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_endpoint(request: Request) -> Response:
    state = running_state(request.app)
    if state is not None:
        engine = state.resources.engine
        await metrics.OUTBOX.refresh(engine)
        await metrics.RECONCILE.refresh(engine)
        await metrics.QUARANTINE.refresh(engine)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
