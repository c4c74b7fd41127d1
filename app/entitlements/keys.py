"""Redis key layout. Every key of a subscription carries the hash tag `{sub:<id>}`, so in Redis
Cluster all of them live in one slot: one Lua script can read and move them together, and the
subscriptions spread over the cluster's shards."""

from __future__ import annotations

import uuid


def tag(subscription_id: uuid.UUID | str) -> str:
    return f"{{sub:{subscription_id}}}"


def snapshot_key(subscription_id: uuid.UUID | str) -> str:
    return f"ent:{tag(subscription_id)}:snapshot"


def api_key_index(api_key_id: str) -> str:
    """The snapshot by API key id (its own slot: it is read before the subscription is known)."""
    return f"ent:key:{api_key_id}"


def period_counter(subscription_id: uuid.UUID | str, period_start: int) -> str:
    return f"ent:{tag(subscription_id)}:period:{period_start}"


def exhausted_flag(subscription_id: uuid.UUID | str, period_start: int) -> str:
    return f"ent:{tag(subscription_id)}:exhausted:{period_start}"


def window_counter(subscription_id: uuid.UUID | str, window: str, bucket: int) -> str:
    return f"ent:{tag(subscription_id)}:{window}:{bucket}"
