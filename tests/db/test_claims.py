from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.db.claims import claim_period
from app.models import JobRun


async def test_two_workers_racing_for_one_period_claim_it_once(engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine)
    first_claimed = asyncio.Event()
    release = asyncio.Event()

    async def first_worker() -> bool:
        async with sessions.begin() as session:
            claimed = await claim_period(session, "usage_report", "sub-1", "2026-11")
            first_claimed.set()
            await release.wait()  # still inside its transaction: the claim is not committed yet
            return claimed

    async def second_worker() -> bool:
        await first_claimed.wait()
        async with sessions.begin() as session:
            return await claim_period(session, "usage_report", "sub-1", "2026-11")

    first = asyncio.create_task(first_worker())
    second = asyncio.create_task(second_worker())
    await first_claimed.wait()
    await asyncio.sleep(0.2)
    assert not second.done()  # blocked on the unique index until the first one commits
    release.set()
    assert (await first, await second) == (True, False)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(JobRun)) == 1


async def test_a_claim_rolled_back_by_a_failed_job_can_be_claimed_again(engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        assert await claim_period(session, "earnings", "inv-1", "2026-11")
        await session.rollback()
    async with sessions.begin() as session:
        assert await claim_period(session, "earnings", "inv-1", "2026-11")
    async with sessions.begin() as session:
        assert not await claim_period(session, "earnings", "inv-1", "2026-11")
        assert await claim_period(session, "earnings", "inv-1", "2026-12")
        assert await claim_period(session, "earnings", "inv-2", "2026-11")
