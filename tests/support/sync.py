"""`billing sync` as the tests run it: against the Stripe emulator, without rate limiting."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.config import Settings
from app.stripe import StripeGateway
from app.sync.service import SyncService
from app.usage.service import UsageService


def sync_service(
    engine: AsyncEngine, settings: Settings, *, dry_run: bool = False, usage: UsageService | None = None
) -> SyncService:
    return SyncService(
        engine, async_sessionmaker(engine, expire_on_commit=False), StripeGateway(settings), None,
        rate_per_second=1000, commission=settings.platform_commission, dry_run=dry_run, usage=usage,
        invoice_issuer=settings.invoice_issuer_name,
    )  # fmt: skip
