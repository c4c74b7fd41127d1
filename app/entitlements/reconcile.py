"""Reconciliation of the gateway's counters with the metering service's counts.

The usage worker records metering's authoritative counts per day (`usage_records`). A counter
behind them (a gateway that did not track, a Redis that lost keys) is raised to them; a counter
ahead of them (calls allowed and counted, not yet recorded) is never lowered, so a limit once
reached stays reached.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.entitlements.counters import Counters
from app.entitlements.repository import EntitlementRepository
from app.entitlements.service import current_period
from app.usage.repository import UsageRepository

log = logging.getLogger(__name__)
BATCH_SIZE = 500


@dataclass
class Reconciled:
    subscriptions: int = 0
    raised: int = 0


async def reconcile_counters(
    sessionmaker: async_sessionmaker[AsyncSession], redis: Redis | None
) -> Reconciled:
    """Raise every live subscription's period counter to the calls metering recorded in the period."""
    done = Reconciled()
    if redis is None:
        return done
    counters = Counters(redis)
    after: uuid.UUID | None = None
    now = clock.now()
    while True:
        async with sessionmaker() as session:
            page = await EntitlementRepository(session).live_page(api_id=None, after=after, limit=BATCH_SIZE)
            if not page:
                return done
            periods = {uuid.UUID(e.subscription_id): current_period(e, now) for e in page}
            recorded = await UsageRepository(session).period_calls(
                [(id_, start, end) for id_, (start, end) in periods.items()]
            )
        items = [
            (str(id_), (int(periods[id_][0].timestamp()), int(periods[id_][1].timestamp())), calls)
            for id_, calls in recorded.items()
            if calls > 0
        ]
        try:
            before = await counters.used([(id_, period[0]) for id_, period, _ in items])
            after_raise = await counters.raise_to(items, now=int(now.timestamp()))
        except (RedisError, OSError) as exc:
            log.warning("entitlement counters not reconciled: redis unavailable", extra={"error": str(exc)})
            return done
        done.subscriptions += len(page)
        done.raised += sum(1 for b, a in zip(before, after_raise, strict=True) if a > b)
        after = uuid.UUID(page[-1].subscription_id)
