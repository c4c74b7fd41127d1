from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Consumer, PaymentMethod, Subscription
from app.models.subscription import LIVE_STATUSES


class PaymentMethodRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def list_for(self, consumer_id: uuid.UUID, *, for_update: bool = False) -> Sequence[PaymentMethod]:
        """The consumer's cards, oldest first. With `for_update`, card changes of this consumer
        queue behind each other: the consumer row is locked too, since a consumer with no card
        yet has no card row to lock (two first cards would both become the default)."""
        if for_update:
            await self._session.execute(
                select(Consumer.id).where(Consumer.id == consumer_id).with_for_update()
            )
        statement = (
            select(PaymentMethod)
            .where(PaymentMethod.consumer_id == consumer_id)
            .order_by(PaymentMethod.created_at, PaymentMethod.id)
        )
        if for_update:
            statement = statement.with_for_update()
        return (await self._session.execute(statement)).scalars().all()

    async def get_by_stripe_id(self, stripe_payment_method_id: str) -> PaymentMethod | None:
        statement = select(PaymentMethod).where(
            PaymentMethod.stripe_payment_method_id == stripe_payment_method_id
        )
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def has_live_paid_subscription(self, consumer_id: uuid.UUID) -> bool:
        """Whether Stripe will charge this consumer again (a live subscription billed by Stripe)."""
        statement = select(
            exists().where(
                Subscription.consumer_id == consumer_id,
                Subscription.status.in_(LIVE_STATUSES),
                Subscription.stripe_subscription_id.is_not(None),
                Subscription.cancel_at_period_end.is_(False),
            )
        )
        return bool((await self._session.execute(statement)).scalar_one())

    def add(self, payment_method: PaymentMethod) -> None:
        self._session.add(payment_method)

    async def delete(self, payment_method: PaymentMethod) -> None:
        await self._session.delete(payment_method)

    async def flush(self) -> None:
        await self._session.flush()
