"""`billing usage backfill`: the usage service over a chosen range of days, outside the worker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date

from app.config import Settings
from app.resources import opened
from app.usage.service import UsageRun, UsageService


async def run_backfill(
    settings: Settings,
    first: date,
    last: date,
    *,
    subscription_id: uuid.UUID | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> UsageRun:
    async with opened(settings) as resources:
        service = UsageService(resources.sessionmaker, resources.stripe, settings, resources.http)
        return await service.backfill(
            first,
            last,
            only=[subscription_id] if subscription_id is not None else None,
            on_start=on_start,
            on_batch=on_batch,
        )
