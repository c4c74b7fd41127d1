"""`insert_records` writes a fixed set of a window's columns: a row naming any other (an `id`,
which the database gives, or a misspelt column) is refused before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.models import UsageRecord
from app.usage.repository import UsageRepository
from app.usage.windows import meter_event_identifier
from tests.support.usage import pay_per_use

START = datetime(2026, 3, 1, tzinfo=UTC)


async def _window(engine: AsyncEngine, **changes: Any) -> dict[str, Any]:
    world = await pay_per_use(engine)
    row: dict[str, Any] = {
        "subscription_id": world.subscription_id,
        "window_start": START,
        "window_end": START + timedelta(days=1),
        "quantity": 3,
        "successful_calls": 3,
        "failed_calls": 0,
        "meter_event_identifier": meter_event_identifier(world.subscription_id, START),
        "report_status": "pending",
    }
    return {**row, **changes}


async def _recorded(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(UsageRecord))).scalar_one())


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"id": "0192b8a4-0000-7000-8000-000000000000"}, "'id'"), ({"quantitiy": 3}, "'quantitiy'")],
    ids=["id", "misspelt"],
)
async def test_a_row_naming_a_column_insert_records_does_not_write_is_refused_and_nothing_is_written(
    engine: AsyncEngine, extra: dict[str, Any], named: str
) -> None:
    good, bad = await _window(engine), await _window(engine, **extra)
    async with async_sessionmaker(engine).begin() as session:
        with pytest.raises(ValueError, match=named) as refused:
            await UsageRepository(session).insert_records([good, bad])
    assert "the id is the column's default" in str(refused.value)
    assert await _recorded(engine) == 0


async def test_a_row_lacking_a_column_is_refused_by_name(engine: AsyncEngine) -> None:
    row = await _window(engine)
    del row["report_status"]
    async with async_sessionmaker(engine).begin() as session:
        with pytest.raises(ValueError, match="lacks \\['report_status'\\]"):
            await UsageRepository(session).insert_records([row])
    assert await _recorded(engine) == 0


async def test_rows_naming_exactly_the_written_columns_are_recorded(engine: AsyncEngine) -> None:
    async with async_sessionmaker(engine).begin() as session:
        assert await UsageRepository(session).insert_records([await _window(engine)]) == 1
    assert await _recorded(engine) == 1


async def test_a_row_with_a_column_misspelt_in_place_of_its_own_is_refused_naming_both(
    engine: AsyncEngine,
) -> None:
    """As many keys as the written columns, one of them wrong: refused as the others are."""
    good, row = await _window(engine), await _window(engine)
    row["quantitiy"] = row.pop("quantity")
    async with async_sessionmaker(engine).begin() as session:
        with pytest.raises(
            ValueError, match="names \\['quantitiy'\\] it does not write and lacks \\['quantity'\\]"
        ):
            await UsageRepository(session).insert_records([good, row])
    assert await _recorded(engine) == 0
