"""`billing webhooks replay`: reprocess stored events in Stripe's order, in this process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from app.config import Settings
from app.resources import opened
from app.usage.service import UsageService
from app.webhooks.processor import EventProcessor
from app.webhooks.repository import StripeEventRepository

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
    outcomes: Counter[str] = Counter()
    async with opened(settings) as resources:
        async with resources.sessionmaker() as session:
            ids = await StripeEventRepository(session).ids_for_replay(
                event_id=event_id, failed=failed, since=since
            )
        if on_start is not None:
            on_start(len(ids))
        usage = UsageService(resources.sessionmaker, resources.stripe, settings, resources.http)
        processor = EventProcessor(resources.sessionmaker, resources.stripe, resources.redis, settings, usage)
        for current in ids:
            try:
                outcome = await processor.process(current, final_attempt=True, force=True) or "busy"
            except Exception:
                outcome = "failed"
            outcomes[outcome] += 1
            if on_event is not None:
                on_event(current, outcome)
    return ReplayResult(total=len(ids), outcomes=dict(outcomes))
