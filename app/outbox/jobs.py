"""arq jobs of the outbox: deliver one message, and the per-minute sweeper."""

from __future__ import annotations

import uuid
from typing import Any

from arq import cron

from app.integrations.apikey import ApiKeyClient
from app.outbox.delivery import OutboxDelivery
from app.worker.context import job_context


def delivery_of(ctx: dict[str, Any]) -> OutboxDelivery:
    job = job_context(ctx)
    res = job.resources
    return OutboxDelivery(res.sessionmaker, ApiKeyClient(res.settings, res.http), res.settings, job.redis)


async def deliver_outbox_message(ctx: dict[str, Any], message_id: str) -> str:
    """Deliver one outbox message (create, revoke, suspend or restore an API key)."""
    return await delivery_of(ctx).deliver(uuid.UUID(message_id))


async def sweep_outbox(ctx: dict[str, Any]) -> int:
    """Re-enqueue pending outbox messages whose job was lost; runs every minute."""
    return await delivery_of(ctx).sweep()


JOBS = [deliver_outbox_message]
CRON_JOBS = [cron(sweep_outbox, second={30}, unique=True)]
