"""arq WorkerSettings for `billing worker`."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

from app.config import get_settings
from app.dunning import jobs as dunning_jobs
from app.events import jobs as event_jobs
from app.idempotency import jobs as idempotency_jobs
from app.logging import configure_logging
from app.metrics import instrument_worker, serve_worker_metrics
from app.outbox import jobs as outbox_jobs
from app.payouts import jobs as payout_jobs
from app.reconcile import jobs as reconcile_jobs
from app.resources import Resources, freeze_startup_heap
from app.usage import jobs as usage_jobs
from app.webhooks import jobs as webhook_jobs
from app.worker.context import RESOURCES, job_context

# Each domain declares its jobs and crons beside itself (`app/<domain>/jobs.py`); the worker only
# collects them. A job's queued name is its function's name: moving a function keeps it.
DOMAIN_JOBS = (
    webhook_jobs,
    outbox_jobs,
    usage_jobs,
    dunning_jobs,
    payout_jobs,
    reconcile_jobs,
    event_jobs,
    idempotency_jobs,
)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    ctx[RESOURCES] = Resources.open(settings, jobs=True)
    ctx["stop_metrics"] = serve_worker_metrics(settings.host, settings.worker_metrics_port)
    freeze_startup_heap()


async def shutdown(ctx: dict[str, Any]) -> None:
    await job_context(ctx).resources.close()
    if ctx.get("stop_metrics") is not None:
        ctx["stop_metrics"]()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [job for module in DOMAIN_JOBS for job in module.JOBS]
    cron_jobs: ClassVar[list[Any]] = [job for module in DOMAIN_JOBS for job in module.CRON_JOBS]
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = 20
    job_timeout = 300
    keep_result = 3600
    # Jobs that fail with an exception are retried by arq; a job outlives a worker restart.
    max_tries = 8
    allow_abort_jobs = True
    # On SIGTERM: stop picking jobs, let running ones finish for up to 25 s, then cancel them (arq
    # re-queues a cancelled job). Below the worker's terminationGracePeriodSeconds (k8s/worker.yaml).
    job_completion_wait = 25
    # A heartbeat per worker (pod), read by `billing worker --check` (the liveness probe).
    health_check_interval = 30
    health_check_key = f"arq:health-check:{socket.gethostname()}"


instrument_worker(WorkerSettings)
