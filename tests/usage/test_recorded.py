"""The period sum the usage endpoint shows, run on the session's own driver connection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.models import UsageRecord
from app.subscriptions.repository import SubscriptionRepository
from tests.support.billing_data import make_world

DAY = timedelta(days=1)
START = datetime(2026, 11, 1, tzinfo=UTC)


def _window(subscription_id: uuid.UUID, day: int, calls: int) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "subscription_id": subscription_id,
        "window_start": START + day * DAY,
        "window_end": START + (day + 1) * DAY,
        "quantity": calls,
        "successful_calls": calls - 1,
        "failed_calls": 1,
    }


async def test_sums_follow_the_session_across_commits(engine: AsyncEngine) -> None:
    world = await make_world(engine)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with sessionmaker() as session:
        repository = SubscriptionRepository(session)
        await session.execute(insert(UsageRecord), [_window(world.subscription_id, d, 10) for d in range(3)])
        # Inside the open transaction the new rows are seen; the window before START is not counted.
        assert await repository.recorded_usage(world.subscription_id, START, START + 30 * DAY) == (30, 27, 3)
        await session.commit()
        await session.execute(insert(UsageRecord), [_window(world.subscription_id, 3, 5)])
        assert await repository.recorded_usage(world.subscription_id, START, START + 30 * DAY) == (35, 31, 4)
        assert await repository.recorded_usage(world.subscription_id, START + 3 * DAY, START + 4 * DAY) == (
            5,
            4,
            1,
        )
        await session.rollback()
        assert await repository.recorded_usage(world.subscription_id, START, START + 30 * DAY) == (30, 27, 3)
