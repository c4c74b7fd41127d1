from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

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
