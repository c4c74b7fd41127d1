"""arq WorkerSettings for `billing worker`."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

from arq import cron

from app.config import get_settings
from app.events import jobs as event_jobs
from app.logging import configure_logging
from app.metrics import instrument_worker, serve_worker_metrics
from app.outbox import jobs as outbox_jobs
from app.payouts.jobs import run_payouts
from app.reconcile.jobs import reconcile_with_stripe
from app.worker import jobs, webhook_jobs
from app.worker.context import WorkerResources


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    ctx["resources"] = WorkerResources.open(settings)
    ctx["stop_metrics"] = serve_worker_metrics(settings.host, settings.worker_metrics_port)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["resources"].close()
    if ctx.get("stop_metrics") is not None:
        ctx["stop_metrics"]()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        jobs.purge_expired_idempotency_keys,
        outbox_jobs.deliver_outbox_message,
        run_payouts,
        reconcile_with_stripe,
        *webhook_jobs.JOBS,
        *event_jobs.JOBS,
    ]
    cron_jobs: ClassVar[list[Any]] = [
        cron(jobs.purge_expired_idempotency_keys, minute={7}, unique=True),
        cron(outbox_jobs.sweep_outbox, second={30}, unique=True),
        cron(run_payouts, hour={3}, minute={17}, unique=True),
        # Daily; a long run outlives job_timeout, and a retry resumes it where it stopped.
        cron(reconcile_with_stripe, hour={4}, minute={41}, unique=True, timeout=6 * 3600),
        *webhook_jobs.CRON_JOBS,
        *event_jobs.CRON_JOBS,
    ]
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
