"""Writing marketplace events: in the caller's transaction, once per dedupe key."""

from __future__ import annotations

import uuid
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.unit_of_work import after_commit
from app.models import MarketplaceEvent

DELIVER_EVENTS_JOB = "deliver_marketplace_events"


async def publish(
    session: AsyncSession,
    redis: ArqRedis | None,
    *,
    type: str,
    dedupe_key: str,
    subscription_id: uuid.UUID | None,
    payload: dict[str, Any],
) -> bool:
    """Add an event (a no-op if its dedupe key exists) and start its delivery after the commit.

    Returns whether it was new. Without Redis the delivery sweeper picks it up.
    """
    statement = (
        insert(MarketplaceEvent)
        .values(
            id=uuid.uuid4(),
            type=type,
            dedupe_key=dedupe_key,
            subscription_id=subscription_id,
            payload=payload,
        )
        .on_conflict_do_nothing(index_elements=[MarketplaceEvent.dedupe_key])
        .returning(MarketplaceEvent.id)
    )
    event_id = (await session.execute(statement)).scalar_one_or_none()
    if event_id is not None and redis is not None:

        async def enqueue() -> None:
            await redis.enqueue_job(DELIVER_EVENTS_JOB, _job_id=f"events:{event_id}")

        after_commit(session, enqueue)
    return event_id is not None
