"""Wiring for `billing sync` (and the worker's job): build the service from settings and run it."""

from __future__ import annotations

from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.main import create_redis
from app.models import SyncRun
from app.stripe import StripeGateway
from app.sync.service import Progress, SyncService


async def run_sync(
    settings: Settings, *, dry_run: bool, progress: Progress | None = None, repair_orphans: bool = False
) -> SyncRun:
    engine = create_engine(settings)
    redis = create_redis(settings)
    try:
        service = SyncService(
            engine,
            create_sessionmaker(engine),
            StripeGateway(settings),
            redis,
            rate_per_second=settings.stripe_rate_limit_per_second,
            commission=settings.platform_commission,
            dry_run=dry_run,
            progress=progress,
            repair_orphans=repair_orphans,
        )
        return await service.run()
    finally:
        await redis.aclose()
        await engine.dispose()
