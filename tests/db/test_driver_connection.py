"""A statement sent on the session's asyncpg connection belongs to the session's transaction,
even when it is the first statement of that session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.session import driver_connection


@pytest.fixture
async def probe(engine: AsyncEngine) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE IF NOT EXISTS driver_probe (n int)"))
        await connection.execute(text("TRUNCATE driver_probe"))
    yield
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE driver_probe"))


async def _rows(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return int((await session.execute(text("SELECT count(*) FROM driver_probe"))).scalar_one())


@pytest.mark.usefixtures("probe")
async def test_a_first_statement_on_the_driver_rolls_back_with_its_session(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        driver = await driver_connection(session)
        await driver.execute("INSERT INTO driver_probe VALUES (1)")
        await session.rollback()
    assert await _rows(engine) == 0


@pytest.mark.usefixtures("probe")
async def test_a_first_statement_on_the_driver_commits_with_its_session(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        driver = await driver_connection(session)
        await driver.execute("INSERT INTO driver_probe VALUES (1)")
        await session.execute(text("INSERT INTO driver_probe VALUES (2)"))
        await session.commit()
    assert await _rows(engine) == 2
