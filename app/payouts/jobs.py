"""The payout job: thin, it opens the transactions and delegates to PayoutService."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from arq import cron
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.errors import DomainError
from app.payouts.service import PayoutRun, PayoutService
from app.stripe import StripeGateway
from app.worker.context import job_context

log = logging.getLogger(__name__)


async def pay_out_earnings(
    sessionmaker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> PayoutRun:
    """One payout run for the period of `now` (its UTC day). Safe to repeat and to retry."""
    now = now or clock.now()
    period = now.date().isoformat()
    async with unit_of_work(sessionmaker) as session:
        released, created = await PayoutService(session, stripe, settings).prepare(period, now)
    async with sessionmaker() as session:
        # Pending payouts of earlier periods too: a failed transfer is retried with its own key.
        due = await PayoutService(session, stripe, settings).pending_payout_ids()
    paid = failed = 0
    for payout_id in due:
        try:
            async with unit_of_work(sessionmaker) as session:
                paid += await PayoutService(session, stripe, settings).transfer(payout_id)
        except DomainError as exc:
            failed += 1
            log.warning("payout transfer failed", extra={"payout_id": str(payout_id), "code": exc.code})
            async with unit_of_work(sessionmaker) as session:
                await PayoutService(session, stripe, settings).record_failure(payout_id, exc)
    return PayoutRun(released=released, created=created, paid=paid, failed=failed)


async def run_payouts(ctx: dict[str, Any]) -> dict[str, int]:
    """arq job (daily cron): transfer creators' available net earnings to their Connect accounts."""
    res = job_context(ctx).resources
    run = await pay_out_earnings(res.sessionmaker, res.stripe, res.settings)
    log.info("payout run", extra=asdict(run))
    return asdict(run)


JOBS = [run_payouts]
CRON_JOBS = [cron(run_payouts, hour={3}, minute={17}, unique=True)]
