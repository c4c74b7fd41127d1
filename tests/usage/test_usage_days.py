"""`usage_days` (the creator report's daily sums) always equals the windows summed per UTC day,
whatever writes `usage_records`: the worker's batch insert and its rerun, fixes of counts or of
a window's start, status changes, deletes, a subscription's deletion and a truncate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.usage.repository import UsageRepository
from tests.support import rows

DAY_SUMS = """
    SELECT subscription_id, (window_start AT TIME ZONE 'UTC')::date AS day, count(*)::int,
           sum(quantity)::bigint, sum(successful_calls)::bigint, sum(failed_calls)::bigint
    FROM usage_records GROUP BY 1, 2 ORDER BY 1, 2
"""
KEPT = """
    SELECT subscription_id, day, windows, calls, successful_calls, failed_calls
    FROM usage_days ORDER BY 1, 2
"""


async def _days_match_windows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        expected = [tuple(r) for r in await connection.execute(text(DAY_SUMS))]
        kept = [tuple(r) for r in await connection.execute(text(KEPT))]
    assert kept == expected
    return len(kept)


def _windows(subscription_id: uuid.UUID, first: datetime, hours: int) -> list[dict[str, Any]]:
    """Hourly windows from `first` (across midnight when it is late in the day)."""
    return [
        {
            "subscription_id": subscription_id,
            "window_start": first + timedelta(hours=h),
            "window_end": first + timedelta(hours=h + 1),
            "quantity": 10 + h,
            "successful_calls": 9 + h,
            "failed_calls": 1,
            "meter_event_identifier": None,
            "report_status": "unbilled",
        }
        for h in range(hours)
    ]


async def test_daily_sums_equal_the_windows_after_every_kind_of_write(engine: AsyncEngine) -> None:
    api = rows.api("creator-days", "days-api")
    plan, version = rows.plan(api)
    alice, bob = rows.consumer("alice"), rows.consumer("bob")
    sub_a, sub_b = rows.subscription(alice, plan), rows.subscription(bob, plan)
    await rows.add(engine, api, plan, version, alice, bob, sub_a, sub_b)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    late = datetime(2026, 3, 1, 20, tzinfo=UTC)
    batch = _windows(sub_a.id, late, 10) + _windows(sub_b.id, late + timedelta(days=1), 30)

    async def execute(statement: str, **params: Any) -> None:
        async with engine.begin() as connection:
            await connection.execute(text(statement), params)

    async with sessions.begin() as session:
        assert await UsageRepository(session).insert_records(batch) == 40
    assert await _days_match_windows(engine) == 5  # 2 days of alice's, 3 of bob's

    # A rerun with one new window: the duplicates add nothing, the new one is counted.
    extra = _windows(sub_a.id, late + timedelta(hours=10), 1)
    async with sessions.begin() as session:
        assert await UsageRepository(session).insert_records(batch + extra) == 1
    await _days_match_windows(engine)

    # The ORM (as fixtures and fixes by hand write them), then a status-only change.
    await rows.add(engine, rows.usage(sub_b, datetime(2026, 3, 9, 5, tzinfo=UTC), 7, 2))
    await execute("UPDATE usage_records SET report_status = 'pending', report_attempt = 1")
    await _days_match_windows(engine)

    # Counts corrected, a window moved to another day, windows deleted until a day is empty.
    await execute(
        "UPDATE usage_records SET quantity = quantity * 3, failed_calls = 0 WHERE subscription_id = :s",
        s=sub_a.id,
    )
    await execute(
        "UPDATE usage_records SET window_start = window_start + interval '3 days', "
        "window_end = window_end + interval '3 days' WHERE subscription_id = :s AND quantity > 60",
        s=sub_b.id,
    )
    await execute(
        "DELETE FROM usage_records WHERE subscription_id = :s AND window_start < :t",
        s=sub_a.id,
        t=late + timedelta(hours=4),
    )
    await execute("DELETE FROM usage_records WHERE window_start >= '2026-03-09'")
    await _days_match_windows(engine)

    # The subscription's deletion takes its windows, and so its days; a truncate takes the rest.
    await execute("DELETE FROM subscriptions WHERE id = :s", s=sub_b.id)
    assert await _days_match_windows(engine) == 1  # alice's second day
    await execute("TRUNCATE usage_records")
    assert await _days_match_windows(engine) == 0


async def test_a_window_starting_at_midnight_utc_counts_for_the_day_it_starts(engine: AsyncEngine) -> None:
    api = rows.api("creator-days", "days-api")
    plan, version = rows.plan(api)
    alice = rows.consumer("alice")
    sub = rows.subscription(alice, plan)
    await rows.add(
        engine,
        api,
        plan,
        version,
        alice,
        sub,
        rows.usage(sub, datetime(2026, 3, 1, 23, tzinfo=UTC), 5),
        rows.usage(sub, datetime(2026, 3, 2, tzinfo=UTC), 7),
    )
    async with engine.connect() as connection:
        days = [
            tuple(r) for r in await connection.execute(text("SELECT day, calls FROM usage_days ORDER BY day"))
        ]
    assert [(d.isoformat(), c) for d, c in days] == [("2026-03-01", 5), ("2026-03-02", 7)]
