"""Our app over ASGI, as the tests (and benches) call it: through an httpx client, or, for calls
that skip an HTTP client, with an HTTP GET's scope as a server hands it to the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import orjson
from fastapi import FastAPI
from starlette.routing import BaseRoute

from app.config import Settings
from app.main import create_app

T = TypeVar("T")


def api_client(app: FastAPI) -> httpx.AsyncClient:
    """A client of `app` over ASGI; an unhandled error comes back as the app's 500, not raised."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://billing.test")


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app on `settings`, started (its lifespan run), and a client of it."""
    application = create_app(settings)
    async with application.router.lifespan_context(application), api_client(application) as http:
        yield application, http


def get_scope(path: str, *, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    """A fresh GET scope each call: the app writes into the one it is given."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("billing.test", 80),
    }


async def lean_and_declared(
    app: FastAPI, lean: BaseRoute, answers: Callable[[], Awaitable[list[T]]]
) -> tuple[list[T], list[T]]:
    """`answers()` with the lean route in its place ahead of the declared routes, then without
    it (the declared route it stands in for answers), for tests that compare the two."""
    with_lean = await answers()
    place = app.router.routes.index(lean)
    app.router.routes.remove(lean)
    try:
        declared = await answers()
    finally:
        app.router.routes.insert(place, lean)
    return with_lean, declared


def matched_by(route: BaseRoute, methods: tuple[str, ...], paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """Which of every (method, path) the route matches in full."""
    asked = [(method, path) for method in methods for path in paths]
    return [
        (m, p) for m, p in asked if route.matches({"type": "http", "method": m, "path": p})[0].name == "FULL"
    ]


def fields_named(answers: list[tuple[int, Any, bytes]]) -> set[str]:
    """The fields the 422s among (status, headers, body) answers name."""
    return {
        detail["field"]
        for status, _, body in answers
        if status == 422
        for detail in orjson.loads(body)["details"]
    }
