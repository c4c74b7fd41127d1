"""`billing api` plus one slow route, so the shutdown test has a request in flight.

Run as `python tests/support/slow_api.py api --port N`: the real CLI, server and app, with the extra route
added by wrapping `app.main.create_app`.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

import app.main
from app.cli import main
from app.config import Settings

_create_app = app.main.create_app


def create_app_with_slow_route(settings: Settings | None = None) -> FastAPI:
    application = _create_app(settings)

    @application.get("/test/slow")
    async def slow(seconds: float) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    return application


app.main.create_app = create_app_with_slow_route

if __name__ == "__main__":
    main()
