"""A statement compiled once for the driver runs there with its parameters in their order: those
built with a value keep it, the others are given by name, an IN list is plain positional ones."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.session import driver_connection
from app.db.statements import DriverStatement
from app.models import Consumer
from tests.support import rows

_BY_USER_AND_EMAIL = DriverStatement.compile(
    select(Consumer.user_id)
    .where(
        Consumer.email.in_(["ann@example.com", "bob@example.com"]),
        Consumer.user_id != bindparam("not_user", None),
    )
    .order_by(Consumer.user_id)
    .limit(bindparam("limit", None))
)


def test_a_driver_statement_gives_its_arguments_in_the_order_of_their_numbers() -> None:
    statement = _BY_USER_AND_EMAIL
    assert "IN ($3::VARCHAR, $4::VARCHAR)" in statement.sql
    assert statement.args({"not_user": "x", "limit": 5}) == ["x", 5, "ann@example.com", "bob@example.com"]


async def test_a_driver_statement_runs_on_the_sessions_driver_connection(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        session.add_all(
            rows.consumer(user_id, email=f"{user_id}@example.com") for user_id in ("ann", "bob", "cy")
        )
        await session.flush()
        driver = await driver_connection(session)
        found = await driver.fetch(
            _BY_USER_AND_EMAIL.sql, *_BY_USER_AND_EMAIL.args({"not_user": "ann", "limit": 10})
        )
        await session.rollback()
    assert [row["user_id"] for row in found] == ["bob"]
