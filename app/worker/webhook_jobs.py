"""Jobs of the webhook pipeline: process one stored event, sweep events whose job was lost."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from arq import Retry, cron
from arq.connections import ArqRedis

from app import clock
from app.db.session import run_after_commit
from app.dunning.service import DunningService
from app.outbox.service import Outbox
from app.usage.service import UsageService
from app.webhooks.ingest import PROCESS_JOB, event_job_id
from app.webhooks.processor import MAX_ATTEMPTS, EventProcessor, retry_delay
from app.webhooks.repository import StripeEventRepository
from app.worker.context import resources

log = logging.getLogger(__name__)
SWEEP_BATCH = 500


def event_processor(ctx: dict[str, Any]) -> EventProcessor:
    res = resources(ctx)
    return EventProcessor(res.sessionmaker, res.stripe, ctx.get("redis"), res.settings, res.http)


async def process_stripe_event(ctx: dict[str, Any], event_id: str) -> str | None:
    """Apply one stored Stripe event; retried with backoff, `failed` after the last attempt."""
    attempt = int(ctx.get("job_try", 1))
    final = attempt >= MAX_ATTEMPTS
    try:
        return await event_processor(ctx).process(event_id, final_attempt=final)
    except Exception as exc:
        if final:
            log.warning("stripe event failed for good", extra={"event_id": event_id})
            return "failed"
        raise Retry(defer=retry_delay(attempt)) from exc


async def enqueue_pending_stripe_events(ctx: dict[str, Any], *, min_age_seconds: int = 60) -> int:
    """Enqueue stored events still pending after `min_age_seconds` (e.g. Redis was down at ingest).

    arq refuses a second job with the same id, so events whose job exists are left alone.
    Returns how many jobs this call enqueued.
    """
    redis: ArqRedis = ctx["redis"]
    async with resources(ctx).sessionmaker() as session:
        ids = await StripeEventRepository(session).pending_ids(
            received_before=clock.now() - timedelta(seconds=min_age_seconds), limit=SWEEP_BATCH
        )
    enqueued = 0
    for event_id in ids:
        if await redis.enqueue_job(PROCESS_JOB, event_id, _job_id=event_job_id(event_id)) is not None:
            enqueued += 1
    if enqueued:
        log.info("re-enqueued pending stripe events", extra={"count": enqueued})
    return enqueued


async def aggregate_usage(ctx: dict[str, Any], subscription_id: str | None = None) -> dict[str, int]:
    """Record and report ended usage windows: all metered subscriptions (cron) or one (on demand).

    Subscriptions whose metering (or Stripe) failed for the moment are simply left for the next
    run; windows Stripe refuses are quarantined (`billing usage quarantine`).
    """
    res = resources(ctx)
    only = [uuid.UUID(subscription_id)] if subscription_id else None
    run = await UsageService(res.sessionmaker, res.stripe, res.settings, res.http).aggregate(only=only)
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


async def suspend_overdue_api_keys(ctx: dict[str, Any]) -> int:
    """Dunning: suspend the keys of subscriptions past due for longer than the grace period."""
    res = resources(ctx)
    async with res.sessionmaker() as session:
        async with session.begin():
            suspended = await DunningService(session, Outbox(session, ctx.get("redis"))).suspend_overdue(
                now=clock.now(), grace=timedelta(days=res.settings.dunning_grace_days)
            )
        await run_after_commit(session)
    return suspended


JOBS = [process_stripe_event, enqueue_pending_stripe_events, aggregate_usage, suspend_overdue_api_keys]
CRON_JOBS = [
    cron(enqueue_pending_stripe_events, second={30}, unique=True),
    cron(aggregate_usage, minute=set(range(0, 60, 5)), second={10}, unique=True),
    cron(suspend_overdue_api_keys, minute={17, 47}, unique=True),
]
