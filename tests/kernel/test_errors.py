from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.support.auth import Auth


async def test_unknown_route_is_404_in_the_error_format(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error", "code", "request_id"}
    assert body["code"] == "not_found"


async def test_validation_errors_name_the_field(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(
        "/api/v1/apis/my-api/plans", json={"name": "x", "type": "gold"}, headers=auth("creator")
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert any(d["field"] == "type" for d in body["details"])
    assert body["request_id"] == response.headers["x-request-id"]


async def test_incoming_request_id_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"


async def test_unexpected_exception_is_500_in_the_error_format(settings: Settings) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert "secret internals" not in body["error"]
    assert body["request_id"]


async def test_far_off_query_dates_are_422_not_500(client: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    await client.post("/api/v1/apis/dated-api/plans", json={"name": "Free", "type": "free"}, headers=creator)
    for path, headers in (
        ("/api/v1/invoices?to=9999-12-31", auth("consumer")),
        ("/api/v1/apis/dated-api/usage?to=9999-12-31", creator),
        ("/api/v1/apis/dated-api/earnings?from=0001-01-05", creator),
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["details"][0]["field"] in {"from", "to"}
