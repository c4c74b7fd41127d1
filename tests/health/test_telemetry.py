"""FastAPI's native OpenTelemetry: off by default (no request looks for a configured SDK), on
with OPENTELEMETRY for a process that configures one."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace

from app.config import Settings
from app.main import create_app
from tests.support.settings import make_settings


@pytest.mark.parametrize("enabled", [False, True])
async def test_requests_look_for_an_opentelemetry_provider_only_when_it_is_enabled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    asked: list[str] = []

    def configured_provider() -> trace.TracerProvider:
        asked.append("tracer provider")
        return trace.NoOpTracerProvider()  # an SDK's stand-in: not the API's deferred proxy

    monkeypatch.setattr(trace, "get_tracer_provider", configured_provider)
    app = create_app(
        make_settings(database_url=settings.database_url, redis_url=settings.redis_url, opentelemetry=enabled)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        asked.clear()
        responses = [await http.get("/health") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert bool(asked) is enabled, asked
