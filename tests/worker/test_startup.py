"""What a process loads before its first request or job is kept off the garbage collector, so a
full collection stays short wherever it falls (in the API and in the worker alike)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from app.config import Settings
from app.main import create_app
from app.worker import settings as worker_settings


async def test_the_worker_keeps_the_collector_off_what_it_loaded_at_start_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        worker_settings, "get_settings", lambda: settings.model_copy(update={"worker_metrics_port": 0})
    )
    gc.unfreeze()
    ctx: dict[str, Any] = {}
    await worker_settings.startup(ctx)
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await worker_settings.shutdown(ctx)


async def test_the_api_keeps_the_collector_off_what_it_loaded_at_start_up(settings: Settings) -> None:
    app = create_app(settings)
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
