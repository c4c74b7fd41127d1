"""`billing usage quarantine` and `billing usage retry`: the operator's view of refused windows."""

from __future__ import annotations

import uuid

from app.config import Settings
from app.resources import opened
from app.usage.repository import Quarantined
from app.usage.service import UsageRun, UsageService


async def list_quarantined(settings: Settings, subscription_id: uuid.UUID | None = None) -> list[Quarantined]:
    async with opened(settings) as resources:
        service = UsageService(resources.sessionmaker, resources.stripe, settings, resources.http)
        return await service.quarantined(subscription_id)


async def retry_quarantined(
    settings: Settings, *, window_id: uuid.UUID | None = None, subscription_id: uuid.UUID | None = None
) -> UsageRun:
    async with opened(settings) as resources:
        service = UsageService(resources.sessionmaker, resources.stripe, settings, resources.http)
        return await service.retry(window_id=window_id, subscription_id=subscription_id)
