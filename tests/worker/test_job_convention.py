"""Each domain declares its jobs beside itself; the worker settings only collect them."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from app.worker.settings import DOMAIN_JOBS, WorkerSettings

APP = Path(__file__).resolve().parents[2] / "app"
DOMAIN_JOBS_MODULE = re.compile(r"^app\.[a-z_]+\.jobs$")
# Jobs already queued in Redis name their function; a deploy must still run each of these.
QUEUED_NAMES = {
    "process_stripe_event",
    "enqueue_pending_stripe_events",
    "aggregate_usage",
    "suspend_overdue_api_keys",
    "deliver_outbox_message",
    "run_payouts",
    "reconcile_with_stripe",
    "deliver_marketplace_events",
    "purge_expired_idempotency_keys",
}


# The worker's metrics wrap each job (functools.wraps); the declared function is underneath.
def _functions() -> list[object]:
    return [inspect.unwrap(job) for job in WorkerSettings.functions]


def _crons() -> list[object]:
    return [inspect.unwrap(job.coroutine) for job in WorkerSettings.cron_jobs]


@pytest.mark.parametrize("job", _functions() + _crons(), ids=lambda job: getattr(job, "__name__", "?"))
def test_every_worker_job_is_declared_in_its_domains_jobs_module(job: object) -> None:
    module = inspect.getmodule(job)
    assert module is not None
    assert DOMAIN_JOBS_MODULE.match(module.__name__), f"{module.__name__} is not app/<domain>/jobs.py"
    assert job in [*module.JOBS, *(cron.coroutine for cron in module.CRON_JOBS)]


def test_the_worker_collects_every_domains_jobs_module() -> None:
    """A jobs.py the worker does not collect would declare jobs that never run."""
    found = {f"app.{path.parent.name}.jobs" for path in APP.glob("*/jobs.py") if path.parent.name != "worker"}
    assert {module.__name__ for module in DOMAIN_JOBS} == found
    for name in found:
        module = importlib.import_module(name)
        assert isinstance(module.JOBS, list)
        assert isinstance(module.CRON_JOBS, list)


def test_queued_job_names_stay_stable_across_the_move() -> None:
    names = [function.__name__ for function in _functions()]  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    assert set(names) >= QUEUED_NAMES


def test_cron_job_names_are_unique() -> None:
    names = [job.name for job in WorkerSettings.cron_jobs]
    assert len(names) == len(set(names))
