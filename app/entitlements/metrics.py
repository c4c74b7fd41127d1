"""Entitlement metrics, on the service's one registry."""

from __future__ import annotations

from prometheus_client import Counter

from app.metrics import REGISTRY

CHECKS = Counter(
    "billing_entitlement_checks_total",
    "Entitlement checks by outcome reason",
    ["reason"],
    registry=REGISTRY,
)
REDIS_DEGRADED = Counter(
    "billing_entitlement_redis_degraded_total",
    "Checks and tracks answered by the Redis-down policy",
    ["policy"],
    registry=REGISTRY,
)
