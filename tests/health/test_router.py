from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.dev.processes import EmbeddedPostgres
from app.main import create_app
from tests.support.settings import make_settings


async def test_health_touches_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_database_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


async def _get(app: FastAPI, path: str) -> httpx.Response:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        return await http.get(path)


async def test_ready_is_503_when_the_database_is_stopped(settings: Settings) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))
    server = EmbeddedPostgres(folder / "pg")
    uri = server.start()
    app = create_app(make_settings(database_url=uri, redis_url=settings.redis_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/ready")).status_code == 200
            server.stop()
            response = await http.get("/ready")
            assert (await http.get("/health")).status_code == 200
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "not_ready"
    assert "database" in body["error"]
    assert body["request_id"]


async def test_ready_is_503_when_redis_is_unreachable(settings: Settings) -> None:
    app = create_app(make_settings(database_url=settings.database_url, redis_url="redis://127.0.0.1:1/0"))
    response = await _get(app, "/ready")
    assert response.status_code == 503
    assert "redis" in response.json()["error"]


async def test_metrics_are_served_in_prometheus_format(client: httpx.AsyncClient) -> None:
    await client.get("/health")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert (
        'billing_http_request_duration_seconds_count{method="GET",route="/health",status="200"}'
        in response.text
    )


async def test_openapi_documents_errors(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    register = response.json()["paths"]["/api/v1/consumers/register"]["post"]
    assert "401" in register["responses"]
    assert (await client.get("/docs")).status_code == 200
