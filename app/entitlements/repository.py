"""Queries that build entitlements from the ledger (subscriptions, plan versions, key intents)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.entitlements.snapshot import Entitlement
from app.models import OutboxMessage, PricingPlan, PricingPlanVersion, Subscription
from app.models.subscription import LIVE_STATUSES


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _suspended() -> Any:
    """Whether the subscription's latest key intent is a suspension (dunning), as the outbox orders them."""
    latest = (
        select(OutboxMessage.kind)
        .where(
            OutboxMessage.subscription_id == Subscription.id,
            OutboxMessage.kind.in_(("suspend_api_key", "restore_api_key")),
        )
        .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
        .limit(1)
        .correlate(Subscription)
        .scalar_subquery()
    )
    return case((latest == "suspend_api_key", True), else_=False)


def _statement() -> Select[Any]:
    return (
        select(Subscription, PricingPlan, PricingPlanVersion, _suspended())
        .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(
            PricingPlanVersion,
            and_(
                PricingPlanVersion.plan_id == Subscription.pricing_plan_id,
                PricingPlanVersion.version == Subscription.plan_version,
            ),
        )
    )


def to_entitlement(
    subscription: Subscription, plan: PricingPlan, version: PricingPlanVersion, suspended: bool
) -> Entitlement:
    return Entitlement(
        subscription_id=str(subscription.id),
        consumer_id=str(subscription.consumer_id),
        api_id=subscription.api_id,
        api_key_id=subscription.api_key_id,
        status=subscription.status,
        suspended=bool(suspended),
        plan_id=str(plan.id),
        plan_version=version.version,
        plan_type=plan.type,
        currency=version.currency,
        call_limit=version.call_limit,
        price_per_call=str(version.price_per_call) if version.price_per_call is not None else None,
        overage_price_per_call=(
            str(version.overage_price_per_call) if version.overage_price_per_call is not None else None
        ),
        monthly_amount=version.monthly_amount,
        rate_limit_per_minute=plan.rate_limit_per_minute,
        rate_limit_per_day=plan.rate_limit_per_day,
        rate_limit_per_month=plan.rate_limit_per_month,
        current_period_start=_epoch(subscription.current_period_start),
        current_period_end=_epoch(subscription.current_period_end),
        started_at=int(subscription.started_at.timestamp()),
        monthly_spend_cap=subscription.monthly_spend_cap,
    )


class EntitlementRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def by_subscription(self, subscription_id: uuid.UUID) -> Entitlement | None:
        row = (await self._session.execute(_statement().where(Subscription.id == subscription_id))).first()
        return to_entitlement(*row) if row is not None else None

    async def by_api_key(self, api_key_id: str) -> Entitlement | None:
        """The subscription holding the key: a live one first (a cancelled one keeps its key's id)."""
        statement = (
            _statement()
            .where(Subscription.api_key_id == api_key_id)
            .order_by(Subscription.status.in_(LIVE_STATUSES).desc(), Subscription.created_at.desc())
            .limit(1)
        )
        row = (await self._session.execute(statement)).first()
        return to_entitlement(*row) if row is not None else None

    async def live_page(
        self, *, api_id: str | None, after: uuid.UUID | None, limit: int
    ) -> list[Entitlement]:
        """Live subscriptions' entitlements in id order, a page at a time (the gateway's warm-up)."""
        statement = _statement().where(Subscription.status.in_(LIVE_STATUSES))
        if api_id is not None:
            statement = statement.where(Subscription.api_id == api_id)
        if after is not None:
            statement = statement.where(Subscription.id > after)
        statement = statement.order_by(Subscription.id).limit(limit)
        return [to_entitlement(*row) for row in (await self._session.execute(statement)).all()]

    async def many(self, subscription_ids: Sequence[uuid.UUID]) -> list[Entitlement]:
        if not subscription_ids:
            return []
        statement = _statement().where(Subscription.id.in_(subscription_ids))
        return [to_entitlement(*row) for row in (await self._session.execute(statement)).all()]

    async def get_subscription(
        self, subscription_id: uuid.UUID, *, for_update: bool = False
    ) -> Subscription | None:
        statement = select(Subscription).where(Subscription.id == subscription_id)
        if for_update:
            statement = statement.with_for_update()
        return (await self._session.execute(statement)).scalar_one_or_none()
