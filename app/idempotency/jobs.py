"""The idempotency domain's worker job: forget stored answers whose window has passed."""

from __future__ import annotations

import logging
from typing import Any

from arq import cron

from app import clock
from app.db.unit_of_work import unit_of_work
from app.idempotency.store import purge_expired
from app.worker.context import job_context

log = logging.getLogger(__name__)


async def purge_expired_idempotency_keys(ctx: dict[str, Any]) -> int:
    """Forget stored POST answers whose 24 h window has passed."""
    async with unit_of_work(job_context(ctx).resources.sessionmaker) as session:
        purged = await purge_expired(session, clock.now())
    log.info("purged idempotency keys", extra={"count": purged})
    return purged


JOBS = [purge_expired_idempotency_keys]
CRON_JOBS = [cron(purge_expired_idempotency_keys, minute={7}, unique=True)]
