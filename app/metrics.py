"""Prometheus metrics served on /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.worker import Function
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.logging import request_id_var
from app.models.outbox import API_KEY_KINDS

log = logging.getLogger("app.metrics")
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Histogram(
    "billing_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STRIPE_CALLS = Histogram(
    "billing_stripe_call_duration_seconds",
    "Stripe API call latency by operation and outcome",
    ["operation", "outcome"],
    registry=REGISTRY,
)
STRIPE_ERRORS = Counter(
    "billing_stripe_call_errors_total",
    "Stripe API calls that failed, by operation and Stripe error class",
    ["operation", "error"],
    registry=REGISTRY,
)
SUBSCRIPTION_PRICE_UNMATCHED = Counter(
    "billing_subscription_price_unmatched_total",
    "Subscriptions found billed at a Stripe price that no plan of their API has (flagged, plan kept)",
    registry=REGISTRY,
)
ORPHAN_SUBSCRIPTIONS = Counter(
    "billing_orphan_stripe_subscriptions_total",
    "Stripe subscriptions of our customers with no subscription row of ours, found by sync",
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "billing_webhook_events_total",
    "Stripe webhook events by type and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)
JOBS = Histogram(
    "billing_job_duration_seconds",
    "Worker job durations by job and outcome (ok, failed, cancelled)",
    ["job", "outcome"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
)
JOB_FAILURES = Counter(
    "billing_job_failures_total",
    "Worker job runs that raised, by job and exception class",
    ["job", "error"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "billing_outbox_backlog",
    "Outbox messages not yet delivered, by status (pending, failed); refreshed at most every 15 s",
    ["status"],
    registry=REGISTRY,
)
USAGE_QUARANTINED = Counter(
    "billing_usage_windows_quarantined_total",
    "Usage windows whose meter event was quarantined (refused by Stripe, or unanswered for too long)",
    ["reason"],
    registry=REGISTRY,
)
USAGE_QUARANTINE = Gauge(
    "billing_usage_windows_in_quarantine",
    "Usage windows in quarantine, waiting for an operator's retry; refreshed at most every 15 s",
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "billing_outbox_oldest_pending_age_seconds",
    "Age of the oldest pending outbox message (0 when none)",
    registry=REGISTRY,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).observe(seconds)


# --- worker jobs -----------------------------------------------------------------------------

J = TypeVar("J", bound=Callable[..., Awaitable[Any]])


def instrument_job(job: J) -> J:
    """Wrap an arq job so each run is timed in JOBS and each failure counted in JOB_FAILURES.

    The wrapper keeps the job's name (arq enqueues by name). A cancelled run (worker shutdown,
    timeout) is recorded as `cancelled` and re-raised so arq re-queues it. While the job runs, its
    log lines carry `request_id` "job:<arq job id>".
    """
    name = job.__name__

    @functools.wraps(job)
    async def run(*args: Any, **kwargs: Any) -> Any:
        ctx = args[0] if args and isinstance(args[0], dict) else {}
        token = request_id_var.set(f"job:{ctx['job_id']}") if "job_id" in ctx else None
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await job(*args, **kwargs)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = "failed"
            JOB_FAILURES.labels(name, type(exc).__name__).inc()
            raise
        finally:
            JOBS.labels(name, outcome).observe(time.perf_counter() - started)
            if token is not None:
                request_id_var.reset(token)

    return run  # type: ignore[return-value]


def instrument_worker(settings: type) -> None:
    """Instrument every function and cron job of an arq WorkerSettings class, in place."""
    functions = []
    for entry in getattr(settings, "functions", []):
        if isinstance(entry, Function):
            functions.append(dataclasses.replace(entry, coroutine=instrument_job(entry.coroutine)))
        else:
            functions.append(instrument_job(entry))
    settings.functions = functions  # type: ignore[attr-defined]
    settings.cron_jobs = [  # type: ignore[attr-defined]
        dataclasses.replace(cron_job, coroutine=instrument_job(cron_job.coroutine))
        for cron_job in getattr(settings, "cron_jobs", [])
    ]


# --- gauges computed from the database at scrape time, at most once per interval --------------


class ScrapedGauges(ABC):
    """Gauges refreshed from the database when /metrics is scraped and they are stale, so every
    API replica exports what the worker stored.

    Several scrapes within `interval_seconds` share one query; a failing query keeps the last values.
    """

    what = "gauges"

    def __init__(self, interval_seconds: float = 15.0) -> None:
        self.interval_seconds = interval_seconds
        self._refreshed_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, engine: AsyncEngine) -> None:
        if not self._stale():
            return
        async with self._lock:
            if not self._stale():
                return
            self._refreshed_at = time.monotonic()
            try:
                await self._query(engine)
            except Exception as exc:
                log.warning(f"{self.what} query failed", extra={"error": type(exc).__name__})

    def _stale(self) -> bool:
        return self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.interval_seconds

    @abstractmethod
    async def _query(self, engine: AsyncEngine) -> None:
        """Read the database and set this object's gauges."""


class OutboxBacklog(ScrapedGauges):
    """The outbox gauges."""

    what = "outbox backlog"

    async def _query(self, engine: AsyncEngine) -> None:
        # Only calls the worker delivers (API key intents); `notify` rows are records kept for a
        # notification consumer, which this service does not run, so they never drain here.
        statement = text(
            "SELECT status, count(*) AS n, "
            "coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age "
            "FROM outbox WHERE status IN ('pending', 'failed') AND kind = ANY(:kinds) GROUP BY status"
        )
        async with engine.connect() as connection:
            rows = (await connection.execute(statement, {"kinds": list(API_KEY_KINDS)})).all()
        found = {row.status: row for row in rows}
        for status in ("pending", "failed"):
            OUTBOX_BACKLOG.labels(status).set(found[status].n if status in found else 0)
        OUTBOX_OLDEST_AGE.set(float(found["pending"].age) if "pending" in found else 0.0)


OUTBOX = OutboxBacklog()


# --- reconcile drift, from the newest completed `billing reconcile` run ----------------------

RECONCILE_DRIFT_CENTS = Gauge(
    "billing_reconcile_drift_cents",
    "Money our store and Stripe disagree on in the newest completed reconcile run, in minor units",
    ["check", "currency"],
    registry=REGISTRY,
)
RECONCILE_DRIFT_ITEMS = Gauge(
    "billing_reconcile_drift_items",
    "Objects our store and Stripe disagree on in the newest completed reconcile run",
    ["check"],
    registry=REGISTRY,
)
RECONCILE_COMPLETED_AT = Gauge(
    "billing_reconcile_last_completed_timestamp_seconds",
    "When the newest completed reconcile run finished (0: none yet), to alert on a stale report",
    registry=REGISTRY,
)


def publish_reconcile_drift(
    checks: tuple[str, ...], drift: dict[str, tuple[int, dict[str, int]]], finished_at: float
) -> None:
    """Set the gauges to one run's totals: per check its drift items and cents per currency."""
    RECONCILE_DRIFT_CENTS.clear()
    for check in checks:
        items, cents = drift.get(check, (0, {}))
        RECONCILE_DRIFT_ITEMS.labels(check).set(items)
        for currency, amount in cents.items():
            RECONCILE_DRIFT_CENTS.labels(check, currency).set(amount)
    RECONCILE_COMPLETED_AT.set(finished_at)


class ReconcileDrift(ScrapedGauges):
    """The reconcile gauges, from the newest completed run the worker (or the CLI) stored."""

    what = "reconcile drift"

    async def _query(self, engine: AsyncEngine) -> None:
        from app.models.reconcile import RECONCILE_CHECKS

        newest = text(
            "SELECT id, extract(epoch FROM finished_at) AS at FROM reconcile_runs "
            "WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1"
        )
        totals = text(
            "SELECT check_name, coalesce(currency, '') AS currency, count(*) AS n, sum(drift_cents) AS cents "
            "FROM reconcile_drifts WHERE run_id = :run GROUP BY check_name, currency"
        )
        async with engine.connect() as connection:
            run = (await connection.execute(newest)).one_or_none()
            rows = (await connection.execute(totals, {"run": run.id})).all() if run is not None else []
        drift: dict[str, tuple[int, dict[str, int]]] = {}
        for row in rows:
            items, cents = drift.get(row.check_name, (0, {}))
            drift[row.check_name] = (items + int(row.n), {**cents, row.currency: int(row.cents)})
        publish_reconcile_drift(RECONCILE_CHECKS, drift, float(run.at) if run is not None else 0.0)


RECONCILE = ReconcileDrift(interval_seconds=60.0)


class UsageQuarantine(ScrapedGauges):
    """The quarantined-windows gauge."""

    what = "usage quarantine"

    async def _query(self, engine: AsyncEngine) -> None:
        statement = text("SELECT count(*) FROM usage_records WHERE report_status = 'quarantined'")
        async with engine.connect() as connection:
            USAGE_QUARANTINE.set(int((await connection.execute(statement)).scalar_one()))


QUARANTINE = UsageQuarantine()
# --- the worker's own endpoint ------------------------------------------------------------------


def serve_worker_metrics(host: str, port: int) -> Callable[[], None] | None:
    """Serve REGISTRY on http://host:port/metrics from a thread, so Prometheus scrapes what the
    worker counts (webhook events, jobs). Returns the function that stops it; None when off (port
    0) or when the port is taken: metrics never keep the worker from working."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        log.warning("worker metrics not served", extra={"port": port, "error": str(exc)})
        return None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
