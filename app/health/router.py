"""Liveness, readiness and metrics: no auth, no session dependency."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app import metrics
from app.http import ErrorBody, error_response

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_SECONDS = 1.0


@router.get("/health", summary="The process is alive (touches nothing)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _database_ok(request: Request) -> bool:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return True


async def _redis_ok(request: Request) -> bool:
    return bool(await request.app.state.redis.ping())


async def _check(probe: asyncio.Future[bool] | asyncio.Task[bool]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except Exception:
        return "unavailable"
    return "ok"


@router.get(
    "/ready",
    summary="The database and Redis are reachable",
    responses={503: {"model": ErrorBody, "description": "Not ready"}},
)
async def ready(request: Request) -> JSONResponse:
    if getattr(request.app.state, "draining", False):
        return error_response(request, 503, "draining", "Shutting down")
    database, redis = await asyncio.gather(
        _check(asyncio.ensure_future(_database_ok(request))),
        _check(asyncio.ensure_future(_redis_ok(request))),
    )
    checks = {"database": database, "redis": redis}
    if database == "ok" and redis == "ok":
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, state in checks.items() if state != "ok")
    return error_response(request, 503, "not_ready", f"Not ready: {failing} unreachable")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_endpoint(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        await metrics.OUTBOX.refresh(engine)
        await metrics.RECONCILE.refresh(engine)
        await metrics.QUARANTINE.refresh(engine)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
