"""Our app over ASGI, as the tests call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app


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
