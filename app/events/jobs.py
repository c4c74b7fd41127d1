"""Worker job: deliver due marketplace events (after each commit that adds one, and every 10 s)."""

from __future__ import annotations

from typing import Any

from arq import cron

from app.events.delivery import EventDelivery
from app.worker.context import job_context


async def deliver_marketplace_events(ctx: dict[str, Any]) -> dict[str, int]:
    res = job_context(ctx).resources
    run = await EventDelivery(res.sessionmaker, res.http, res.settings).deliver_due()
    return {"delivered": run.delivered, "retrying": run.retrying, "failed": run.failed}


JOBS = [deliver_marketplace_events]
CRON_JOBS = [cron(deliver_marketplace_events, second=set(range(0, 60, 10)), unique=True)]
