"""Job functions. Each opens its own transaction and delegates to a service."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete

from app import clock
from app.models import IdempotencyKey
from app.worker.context import resources

log = logging.getLogger(__name__)


async def purge_expired_idempotency_keys(ctx: dict[str, Any]) -> int:
    """Forget stored POST answers whose 24 h window has passed."""
    async with resources(ctx).sessionmaker.begin() as session:
        result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < clock.now()))
    purged = int(getattr(result, "rowcount", 0) or 0)
    log.info("purged idempotency keys", extra={"count": purged})
    return purged
