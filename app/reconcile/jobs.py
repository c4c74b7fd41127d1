"""Wiring for `billing reconcile` and the worker's daily run: build the service, run, publish."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from arq import Retry, cron
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import clock, metrics
from app.config import Settings
from app.errors import Conflict
from app.models.reconcile import RECONCILE_CHECKS
from app.reconcile.service import Progress, ReconcileReport, ReconcileService
from app.resources import opened
from app.stripe import StripeGateway
from app.worker.context import job_context

log = logging.getLogger(__name__)

# The daily run compares invoices (and usage periods) of the last 35 days: Stripe's window for
# meter events, and longer than refunds usually take; subscriptions are always listed whole.
DAILY_LOOKBACK = timedelta(days=35)
RETRY_WHEN_BUSY = timedelta(minutes=10)


def reconcile_service(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    progress: Progress | None = None,
) -> ReconcileService:
    return ReconcileService(
        engine,
        sessionmaker,
        stripe,
        rate_per_second=settings.stripe_rate_limit_per_second,
        commission=settings.platform_commission,
        progress=progress,
    )


def publish(report: ReconcileReport) -> None:
    """Export a completed run's drift as the Prometheus gauges."""
    if report.run.status != "completed" or report.run.finished_at is None:
        return
    drift = {check: (totals.items, totals.cents) for check, totals in report.totals.items()}
    metrics.publish_reconcile_drift(RECONCILE_CHECKS, drift, report.run.finished_at.timestamp())


async def run_reconcile(
    settings: Settings, *, since: datetime | None, resume: bool, progress: Progress | None = None
) -> ReconcileReport:
    """One `billing reconcile` from the command line, on its own engine."""
    async with opened(settings) as res:
        service = reconcile_service(res.engine, res.sessionmaker, res.stripe, settings, progress)
        report = await service.report(await service.run(since=since, resume=resume))
    publish(report)
    return report


async def daily_reconcile(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    day: date,
) -> ReconcileReport | None:
    """The run for `day`, once per day; None if that day's run had already completed."""
    service = reconcile_service(engine, sessionmaker, stripe, settings)
    since = clock.now() - DAILY_LOOKBACK
    run = await service.run_for_day(day.isoformat(), since=since)
    if run is None:
        return None
    report = await service.report(run, lines_per_check=0)
    publish(report)
    return report


async def reconcile_with_stripe(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """arq job (daily cron): the day's reconcile report; a retry resumes an interrupted run."""
    res = job_context(ctx).resources
    try:
        report = await daily_reconcile(
            res.engine, res.sessionmaker, res.stripe, res.settings, day=clock.today()
        )
    except Conflict:
        raise Retry(defer=RETRY_WHEN_BUSY) from None  # a reconcile started by hand is running
    if report is None:
        return None
    summary = {
        "run_id": str(report.run.id),
        "checked": report.checked,
        "drift_items": {check: totals.items for check, totals in report.totals.items()},
    }
    log.info("reconcile run", extra=summary)
    return summary


JOBS = [reconcile_with_stripe]
# Daily; a long run outlives job_timeout, and a retry resumes it where it stopped.
CRON_JOBS = [cron(reconcile_with_stripe, hour={4}, minute={41}, unique=True, timeout=6 * 3600)]
