"""`billing events replay`: send chosen events again, in this process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.events.delivery import EventDelivery, replay
from app.resources import opened


@dataclass
class EventReplay:
    chosen: int
    delivered: int
    retrying: int
    failed: int


async def replay_events(
    settings: Settings, *, event_id: uuid.UUID | None, failed: bool, since: datetime | None
) -> EventReplay:
    """Put the chosen events back in a new round, then deliver what is due."""
    async with opened(settings) as resources:
        async with unit_of_work(resources.sessionmaker) as session:
            chosen = await replay(session, event_id=event_id, failed=failed, since=since)
        run = await EventDelivery(resources.sessionmaker, resources.http, settings).deliver_due(limit=10_000)
    return EventReplay(chosen=chosen, delivered=run.delivered, retrying=run.retrying, failed=run.failed)
