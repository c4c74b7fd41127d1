"""Wiring for `billing sync` (and the worker's job): build the service from settings and run it."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.db import create_job_engine, create_sessionmaker
from app.db.redis import create_redis
from app.models import SyncRun
from app.stripe import StripeGateway
from app.sync.service import Progress, SyncService
from app.usage.service import UsageService


async def run_sync(
    settings: Settings, *, dry_run: bool, progress: Progress | None = None, repair_orphans: bool = False
) -> SyncRun:
    engine = create_job_engine(settings)
    redis = create_redis(settings)
    http = httpx.AsyncClient(timeout=settings.sibling_timeout_seconds)
    try:
        sessionmaker = create_sessionmaker(engine)
        stripe = StripeGateway(settings)
        service = SyncService(
            engine,
            sessionmaker,
            stripe,
            redis,
            rate_per_second=settings.stripe_rate_limit_per_second,
            commission=settings.platform_commission,
            invoice_issuer=settings.invoice_issuer_name,
            dry_run=dry_run,
            progress=progress,
            repair_orphans=repair_orphans,
            # A plan change found here first splits the usage at it, as the webhook does.
            usage=UsageService(sessionmaker, stripe, settings, http),
        )
        return await service.run()
    finally:
        await http.aclose()
        await redis.aclose()
        await engine.dispose()
