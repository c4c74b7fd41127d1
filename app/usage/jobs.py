"""The usage domain's worker job: record and report ended usage windows every five minutes."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import cron

from app.entitlements.reconcile import reconcile_counters
from app.usage.service import UsageService
from app.worker.context import job_context

log = logging.getLogger(__name__)


async def aggregate_usage(ctx: dict[str, Any], subscription_id: str | None = None) -> dict[str, int]:
    """Record and report ended usage windows: all metered subscriptions (cron) or one (on demand).

    Subscriptions whose metering (or Stripe) failed for the moment are simply left for the next
    run; windows Stripe refuses are quarantined (`billing usage quarantine`).
    """
    job = job_context(ctx)
    res = job.resources
    only = [uuid.UUID(subscription_id)] if subscription_id else None
    run = await UsageService(res.sessionmaker, res.stripe, res.settings, res.http).aggregate(only=only)
    await reconcile_counters(res.sessionmaker, job.redis)
    if run.unavailable:
        log.warning("metering unavailable", extra={"subscriptions": len(run.unavailable)})
    if run.over_limit:
        log.info("quota overruns flagged", extra={"subscriptions": run.over_limit})
    return {
        "recorded": run.recorded,
        "reported": run.reported,
        "unavailable": len(run.unavailable),
        "stripe_failures": run.stripe_failures,
    }


JOBS = [aggregate_usage]
CRON_JOBS = [cron(aggregate_usage, minute=set(range(0, 60, 5)), second={10}, unique=True)]
