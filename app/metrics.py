"""Prometheus metrics served on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
WEBHOOK_EVENTS = Counter(
    "billing_webhook_events_total",
    "Stripe webhook events by type and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)
JOBS = Histogram(
    "billing_job_duration_seconds",
    "Worker job durations by job and outcome",
    ["job", "outcome"],
    registry=REGISTRY,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).observe(seconds)
