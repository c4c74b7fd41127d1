"""The entitlement snapshot in Redis, and its refresh in the after-commit step of every change."""

from __future__ import annotations

import logging
import uuid

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.unit_of_work import after_commit
from app.entitlements import keys
from app.entitlements.repository import EntitlementRepository
from app.entitlements.snapshot import Entitlement

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300
# An unknown API key is remembered this briefly: a key issued a moment later is seen within a second.
MISSING_TTL_SECONDS = 1
MISSING = b"-"


class EntitlementCache:
    def __init__(self, redis: Redis, *, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def put(self, entitlement: Entitlement) -> None:
        raw = entitlement.dumps()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.snapshot_key(entitlement.subscription_id), raw, ex=self._ttl)
            if entitlement.api_key_id:
                # A copy under the key id: a check by key is one read.
                pipe.set(keys.api_key_index(entitlement.api_key_id), raw, ex=self._ttl)
            await pipe.execute()

    async def remember_missing_key(self, api_key_id: str) -> None:
        await self._redis.set(keys.api_key_index(api_key_id), MISSING, ex=MISSING_TTL_SECONDS)

    async def refresh(self, session: AsyncSession, subscription_id: uuid.UUID) -> Entitlement | None:
        """Read the subscription's entitlement from the ledger and store it (or drop a stale one)."""
        entitlement = await EntitlementRepository(session).by_subscription(subscription_id)
        if entitlement is None:
            await self._redis.delete(keys.snapshot_key(subscription_id))
        else:
            await self.put(entitlement)
        return entitlement


def schedule_refresh(session: AsyncSession, redis: Redis | None, subscription_id: uuid.UUID) -> None:
    """Refresh the subscription's cached entitlement once this session's transaction commits.

    Once per subscription and transaction. Without Redis (a job that has none) nothing is cached
    here and the snapshot's TTL bounds how long a stale one lives.
    """
    if redis is None:
        return
    pending: set[uuid.UUID] = session.info.setdefault("entitlement_refresh", set())
    if subscription_id in pending:
        return
    pending.add(subscription_id)

    async def refresh() -> None:
        pending.discard(subscription_id)
        try:
            await EntitlementCache(redis).refresh(session, subscription_id)
        finally:
            # The read ran in a transaction of its own; end it so the session holds no connection.
            await session.rollback()

    after_commit(session, refresh)
