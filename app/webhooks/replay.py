"""`billing webhooks replay`: reprocess stored events in Stripe's order, in this process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from app.config import Settings
from app.webhooks.processor import EventProcessor
from app.webhooks.repository import StripeEventRepository
from app.worker.context import WorkerResources

Progress = Callable[[str, str], None]


@dataclass
class ReplayResult:
    total: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


async def replay_events(
    settings: Settings,
    *,
    event_id: str | None,
    failed: bool,
    since: datetime | None,
    on_start: Callable[[int], None] | None = None,
    on_event: Progress | None = None,
) -> ReplayResult:
    """Apply the chosen events again (handlers are idempotent); a failure is recorded and skipped."""
    resources = WorkerResources.open(settings)
    redis = ArqRedis(connection_pool=ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=1.0))
    outcomes: Counter[str] = Counter()
    try:
        async with resources.sessionmaker() as session:
            ids = await StripeEventRepository(session).ids_for_replay(
                event_id=event_id, failed=failed, since=since
            )
        if on_start is not None:
            on_start(len(ids))
        processor = EventProcessor(resources.sessionmaker, resources.stripe, redis, settings, resources.http)
        for current in ids:
            try:
                outcome = await processor.process(current, final_attempt=True, force=True) or "busy"
            except Exception:
                outcome = "failed"
            outcomes[outcome] += 1
            if on_event is not None:
                on_event(current, outcome)
    finally:
        await redis.aclose()
        await resources.close()
    return ReplayResult(total=len(ids), outcomes=dict(outcomes))
