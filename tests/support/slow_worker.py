"""`billing worker` plus one slow job, so the shutdown test has a job running.

Run as `python tests/support/slow_worker.py worker`. SLOW_WORKER_COMPLETION_WAIT overrides how long the
worker lets running jobs finish after SIGTERM (to exercise the re-queue path quickly).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from app.cli import main
from app.metrics import instrument_job
from app.worker.settings import WorkerSettings


async def slow_job(ctx: dict[str, Any], seconds: float, marker: str) -> str:
    await ctx["redis"].rpush(f"{marker}:started", ctx["job_try"])
    await asyncio.sleep(seconds)
    await ctx["redis"].set(f"{marker}:done", ctx["job_try"])
    return "done"


WorkerSettings.functions = [*WorkerSettings.functions, instrument_job(slow_job)]
if "SLOW_WORKER_COMPLETION_WAIT" in os.environ:
    WorkerSettings.job_completion_wait = int(os.environ["SLOW_WORKER_COMPLETION_WAIT"])

if __name__ == "__main__":
    main()
