"""Jobs of the webhook pipeline: process one stored event, sweep events whose job was lost."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from arq import Retry, cron

from app import clock
from app.usage.service import UsageService
from app.webhooks.ingest import PROCESS_JOB, event_job_id
from app.webhooks.processor import MAX_ATTEMPTS, EventProcessor, retry_delay
from app.webhooks.repository import StripeEventRepository
from app.worker.context import JobContext, job_context

log = logging.getLogger(__name__)
SWEEP_BATCH = 500
SWEEP_EVERY_SECONDS = 5


def event_processor(job: JobContext) -> EventProcessor:
    res = job.resources
    usage = UsageService(res.sessionmaker, res.stripe, res.settings, res.http)
    return EventProcessor(res.sessionmaker, res.stripe, job.redis, res.settings, usage)


async def process_stripe_event(ctx: dict[str, Any], event_id: str) -> str | None:
    """Apply one stored Stripe event; retried with backoff, `failed` after the last attempt."""
    job = job_context(ctx)
    final = job.job_try >= MAX_ATTEMPTS
    try:
        return await event_processor(job).process(event_id, final_attempt=final)
    except Exception as exc:
        if final:
            log.warning("stripe event failed for good", extra={"event_id": event_id})
            return "failed"
        raise Retry(defer=retry_delay(job.job_try)) from exc


async def enqueue_pending_stripe_events(ctx: dict[str, Any], *, min_age_seconds: int = 5) -> int:
    """Enqueue stored events still pending after `min_age_seconds` (e.g. Redis was down at ingest).

    arq refuses a second job with the same id, so events whose job exists (queued, running or
    retrying) are left alone: sweeping often costs one indexed query and enqueues nothing twice.
    Returns how many jobs this call enqueued.
    """
    job = job_context(ctx)
    redis = job.redis if job.redis is not None else job.resources.redis
    async with job.resources.sessionmaker() as session:
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


JOBS = [process_stripe_event, enqueue_pending_stripe_events]
CRON_JOBS = [
    # Every 5 s: events stored while Redis was away are queued within seconds of its return.
    cron(enqueue_pending_stripe_events, second=set(range(0, 60, SWEEP_EVERY_SECONDS)), unique=True),
]
