"""Wiring for `billing sync` (and the worker's job): build the service from settings and run it."""

from __future__ import annotations

from app.config import Settings
from app.models import SyncRun
from app.resources import opened
from app.sync.service import Progress, SyncService
from app.usage.service import UsageService


async def run_sync(
    settings: Settings, *, dry_run: bool, progress: Progress | None = None, repair_orphans: bool = False
) -> SyncRun:
    async with opened(settings) as res:
        service = SyncService(
            res.engine,
            res.sessionmaker,
            res.stripe,
            res.redis,
            rate_per_second=settings.stripe_rate_limit_per_second,
            commission=settings.platform_commission,
            invoice_issuer=settings.invoice_issuer_name,
            dry_run=dry_run,
            progress=progress,
            repair_orphans=repair_orphans,
            # A plan change found here first splits the usage at it, as the webhook does.
            usage=UsageService(res.sessionmaker, res.stripe, settings, res.http),
        )
        return await service.run()
