from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.base import Base
from app.db.migrate import downgrade, upgrade


@pytest.fixture
def empty_database(postgres_uri: str) -> Iterator[str]:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = postgres_uri.replace("postgresql://", "postgres://")

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield postgres_uri.replace("/postgres?", f"/{name}?")
    asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _differences(url: str) -> list[object]:
    async def compare() -> list[object]:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as connection:
            result = await connection.run_sync(diff)
        await engine.dispose()
        return result

    return asyncio.run(compare())


def _tables(url: str) -> set[str]:
    async def names() -> set[str]:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        async with engine.connect() as connection:
            result = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        await engine.dispose()
        return result

    return asyncio.run(names())


def test_upgrade_matches_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    assert _differences(empty_database) == []


def test_downgrade_to_base_and_up_again(empty_database: str) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert _tables(empty_database) <= {"alembic_version"}
    upgrade(empty_database)
    assert {t.name for t in Base.metadata.sorted_tables} <= _tables(empty_database)


def test_usage_windows_written_before_outcomes_were_kept_keep_what_is_known_of_them(
    empty_database: str,
) -> None:
    """Accepted stay accepted; unsent-looking ones count as first sent when written, so one that
    Stripe may have taken and forgotten is quarantined rather than counted again."""
    upgrade(empty_database, "0001")
    url = empty_database.replace("postgresql://", "postgres://")
    insert = (
        "INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,"
        " successful_calls, failed_calls, meter_event_identifier, reported_at, created_at)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), $1::timestamptz, $1::timestamptz + interval '1 day',"
        " 5, 5, 0, $2, $3, $4)"
    )

    async def seed() -> None:
        connection = await asyncpg.connect(url)
        try:
            # Windows alone, without the subscriptions they belong to.
            await connection.execute(
                "ALTER TABLE usage_records DROP CONSTRAINT fk_usage_records_subscription_id_subscriptions"
            )
            day = datetime(2026, 11, 1, tzinfo=UTC)
            await connection.execute(insert, day, None, None, day)
            await connection.execute(insert, day + timedelta(days=1), "usage:a", day, day)
            written = day + timedelta(days=3)
            await connection.execute(insert, day + timedelta(days=2), "usage:b", None, written)
        finally:
            await connection.close()

    async def outcomes() -> list[tuple[str, datetime | None]]:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("UPDATE usage_records SET quantity = 3000000000")
            rows = await connection.fetch(
                "SELECT report_status, report_first_sent_at FROM usage_records ORDER BY window_start"
            )
            return [(row[0], row[1]) for row in rows]
        finally:
            await connection.close()

    asyncio.run(seed())
    upgrade(empty_database)
    assert asyncio.run(outcomes()) == [
        ("unbilled", None),
        ("accepted", None),
        ("pending", datetime(2026, 11, 4, tzinfo=UTC)),
    ]
