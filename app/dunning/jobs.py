"""The dunning domain's worker job: suspend the keys of subscriptions overdue past the grace."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from arq import cron

from app import clock
from app.db.unit_of_work import unit_of_work
from app.dunning.service import DunningService
from app.outbox.service import Outbox
from app.worker.context import job_context


async def suspend_overdue_api_keys(ctx: dict[str, Any]) -> int:
    """Dunning: suspend the keys of subscriptions past due for longer than the grace period."""
    job = job_context(ctx)
    grace = timedelta(days=job.resources.settings.dunning_grace_days)
    async with unit_of_work(job.resources.sessionmaker) as session:
        return await DunningService(session, Outbox(session, job.redis)).suspend_overdue(
            now=clock.now(), grace=grace
        )


JOBS = [suspend_overdue_api_keys]
CRON_JOBS = [cron(suspend_overdue_api_keys, minute={17, 47}, unique=True)]
