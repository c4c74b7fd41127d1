"""Dunning time travel: a subscription past due for some days, without waiting for them."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def overdue_by(engine: AsyncEngine, days: int) -> None:
    """Move the clock: the subscription has been past due for `days`, and what the outbox holds
    was written before that."""
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE subscriptions SET past_due_since = now() - make_interval(days => :d)"), {"d": days}
        )
        await connection.execute(
            text("UPDATE outbox SET created_at = created_at - make_interval(days => :d + 30)"), {"d": days}
        )
