from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Consumer


class ConsumerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def save_with_customer(
        self, consumer_id: uuid.UUID, user_id: str, email: str | None, stripe_customer_id: str
    ) -> tuple[Consumer, bool]:
        """The user's consumer with its Stripe customer, inserted unless the user has one (then its
        customer is set if it had none); and whether this call created it.

        A concurrent insert for the same user waits on the unique index until the other
        transaction ends, so exactly one caller creates the row.
        """
        inserted = await self._session.execute(
            insert(Consumer)
            .values(id=consumer_id, user_id=user_id, email=email, stripe_customer_id=stripe_customer_id)
            .on_conflict_do_nothing()
            .returning(Consumer.id)
        )
        created = inserted.scalar_one_or_none() is not None
        if not created:
            await self._session.execute(
                update(Consumer)
                .where(Consumer.user_id == user_id, Consumer.stripe_customer_id.is_(None))
                .values(stripe_customer_id=stripe_customer_id)
            )
        statement = (
            select(Consumer).where(Consumer.user_id == user_id).execution_options(populate_existing=True)
        )
        return (await self._session.execute(statement)).scalar_one(), created

    async def get_by_user(self, user_id: str) -> Consumer | None:
        statement = select(Consumer).where(Consumer.user_id == user_id)
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def get(self, consumer_id: uuid.UUID) -> Consumer | None:
        return await self._session.get(Consumer, consumer_id)
