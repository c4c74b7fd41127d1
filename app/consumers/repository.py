from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Consumer


class ConsumerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def insert_if_absent(self, consumer_id: uuid.UUID, user_id: str, email: str | None) -> bool:
        """Insert the consumer unless the user has one; True when this call created it.

        A concurrent insert for the same user waits on the unique index until the other
        transaction ends, so exactly one caller creates the row.
        """
        statement = (
            insert(Consumer)
            .values(id=consumer_id, user_id=user_id, email=email)
            .on_conflict_do_nothing()
            .returning(Consumer.id)
        )
        return (await self._session.execute(statement)).scalar_one_or_none() is not None

    async def get_by_user_for_update(self, user_id: str) -> Consumer:
        statement = select(Consumer).where(Consumer.user_id == user_id).with_for_update()
        return (await self._session.execute(statement)).scalar_one()

    async def get_by_user(self, user_id: str) -> Consumer | None:
        statement = select(Consumer).where(Consumer.user_id == user_id)
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def get(self, consumer_id: uuid.UUID) -> Consumer | None:
        return await self._session.get(Consumer, consumer_id)
