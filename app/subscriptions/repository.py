from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import PricingPlan, PricingPlanVersion, Subscription, UsageRecord
from app.models.subscription import LIVE_STATUSES

_HELD_VERSION = and_(
    PricingPlanVersion.plan_id == Subscription.pricing_plan_id,
    PricingPlanVersion.version == Subscription.plan_version,
)
SubscriptionRow = tuple[Subscription, PricingPlan, PricingPlanVersion]


class SubscriptionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get_owned(
        self, subscription_id: uuid.UUID, consumer_id: uuid.UUID, *, for_update: bool = False
    ) -> Subscription | None:
        statement = select(Subscription).where(
            Subscription.id == subscription_id, Subscription.consumer_id == consumer_id
        )
        if for_update:
            statement = statement.with_for_update()
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def live_on_api(self, consumer_id: uuid.UUID, api_id: str) -> Subscription | None:
        statement = select(Subscription).where(
            Subscription.consumer_id == consumer_id,
            Subscription.api_id == api_id,
            Subscription.status.in_(LIVE_STATUSES),
        )
        return (await self._session.execute(statement)).scalars().first()

    async def page(
        self,
        consumer_id: uuid.UUID,
        *,
        status: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[SubscriptionRow]:
        """Newest first, by (created_at, id) so pages never skip or repeat a row; with the plan
        version each subscription holds, in one query."""
        statement = (
            select(Subscription, PricingPlan, PricingPlanVersion)
            .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
            .join(PricingPlanVersion, _HELD_VERSION)
            .where(Subscription.consumer_id == consumer_id)
            .order_by(Subscription.created_at.desc(), Subscription.id.desc())
            .limit(limit)
        )
        if status is not None:
            statement = statement.where(Subscription.status == status)
        if after is not None:
            created_at, last_id = after
            statement = statement.where(
                or_(
                    Subscription.created_at < created_at,
                    and_(Subscription.created_at == created_at, Subscription.id < last_id),
                )
            )
        return [(s, plan, version) for s, plan, version in await self._session.execute(statement)]

    async def recorded_usage(
        self, subscription_id: uuid.UUID, start: datetime, end: datetime
    ) -> tuple[int, int, int]:
        """Sums of the usage records whose window starts inside [start, end)."""
        statement = select(
            func.coalesce(func.sum(UsageRecord.quantity), 0),
            func.coalesce(func.sum(UsageRecord.successful_calls), 0),
            func.coalesce(func.sum(UsageRecord.failed_calls), 0),
        ).where(
            UsageRecord.subscription_id == subscription_id,
            UsageRecord.window_start >= start,
            UsageRecord.window_start < end,
        )
        total, successful, failed = (await self._session.execute(statement)).one()
        return int(total), int(successful), int(failed)

    def add(self, subscription: Subscription) -> None:
        self._session.add(subscription)

    async def flush(self) -> None:
        await self._session.flush()
