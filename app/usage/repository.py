"""Queries of the usage worker; each touches a whole batch of subscriptions at once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import Select, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.models import Consumer, PricingPlan, PricingPlanVersion, Subscription, UsageRecord
from app.models.subscription import LIVE_STATUSES

_Ts = TypeVarTuple("_Ts")


@dataclass(frozen=True, slots=True)
class MeteredSubscription:
    id: uuid.UUID
    api_id: str
    pay_per_use: bool
    stripe_customer_id: str | None
    started_at: datetime
    last_window_start: datetime | None
    call_limit: int | None
    current_period_start: datetime | None
    current_period_end: datetime | None


@dataclass(frozen=True, slots=True)
class Unreported:
    id: uuid.UUID
    subscription_id: uuid.UUID
    api_id: str
    stripe_customer_id: str
    quantity: int
    identifier: str
    window_end: datetime


_RECORD_COLUMNS = (
    "id",
    "subscription_id",
    "window_start",
    "window_end",
    "quantity",
    "successful_calls",
    "failed_calls",
    "meter_event_identifier",
)
# No conflict target: a concurrent run may collide on the window or on its identifier (the same thing).
_INSERT_RECORDS = text(
    """
    INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,
                               successful_calls, failed_calls, meter_event_identifier, created_at)
    SELECT *, :created_at
    FROM unnest(CAST(:id AS uuid[]), CAST(:subscription_id AS uuid[]),
                CAST(:window_start AS timestamptz[]), CAST(:window_end AS timestamptz[]),
                CAST(:quantity AS int[]), CAST(:successful_calls AS int[]), CAST(:failed_calls AS int[]),
                CAST(:meter_event_identifier AS text[]))
    ON CONFLICT DO NOTHING
    """
)

_PERIOD_CALLS = text(
    """
    SELECT p.subscription_id, coalesce(sum(r.quantity), 0)
    FROM unnest(CAST(:subscription_id AS uuid[]), CAST(:start AS timestamptz[]),
                CAST(:end AS timestamptz[])) AS p(subscription_id, period_start, period_end)
    JOIN usage_records r ON r.subscription_id = p.subscription_id
                        AND r.window_start >= p.period_start AND r.window_start < p.period_end
    GROUP BY p.subscription_id
    """
)


def _metered(statement: Select[*_Ts], only: Sequence[uuid.UUID] | None) -> Select[*_Ts]:
    """Only live subscriptions on a pay-per-use plan or a plan version with a call limit."""
    statement = (
        statement.join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(
            PricingPlanVersion,
            (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
            & (PricingPlanVersion.version == Subscription.plan_version),
        )
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .where(
            Subscription.status.in_(LIVE_STATUSES),
            or_(PricingPlan.type == "pay_per_use", PricingPlanVersion.call_limit.is_not(None)),
        )
    )
    if only is not None:
        statement = statement.where(Subscription.id.in_(only))
    return statement


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def metered_subscriptions(
        self, *, after: uuid.UUID | None, limit: int, only: Sequence[uuid.UUID] | None = None
    ) -> list[MeteredSubscription]:
        """Live pay-per-use or call-limited subscriptions, by id after `after`, with their last window."""
        last_window = (
            select(func.max(UsageRecord.window_start))
            .where(UsageRecord.subscription_id == Subscription.id)
            .scalar_subquery()
        )
        statement = _metered(
            select(
                Subscription.id,
                Subscription.api_id,
                PricingPlan.type,
                Consumer.stripe_customer_id,
                Subscription.started_at,
                last_window,
                PricingPlanVersion.call_limit,
                Subscription.current_period_start,
                Subscription.current_period_end,
            ),
            only,
        )
        statement = statement.order_by(Subscription.id).limit(limit)
        if after is not None:
            statement = statement.where(Subscription.id > after)
        rows = (await self._session.execute(statement)).all()
        return [
            MeteredSubscription(
                id=row[0],
                api_id=row[1],
                pay_per_use=row[2] == "pay_per_use",
                stripe_customer_id=row[3],
                started_at=row[4],
                last_window_start=row[5],
                call_limit=row[6],
                current_period_start=row[7],
                current_period_end=row[8],
            )
            for row in rows
        ]

    async def count_metered(self, *, only: Sequence[uuid.UUID] | None = None) -> int:
        statement = _metered(select(func.count()).select_from(Subscription), only)
        return int((await self._session.execute(statement)).scalar_one())

    async def insert_records(self, rows: list[dict[str, Any]]) -> int:
        """Insert the windows not yet recorded (a rerun adds nothing); returns how many were new.

        One statement per batch whatever its size: the rows travel as one array per column and
        are unnested by PostgreSQL (a VALUES list costs a bound parameter per cell).
        """
        if not rows:
            return 0
        params: dict[str, Any] = {name: [row[name] for row in rows] for name in _RECORD_COLUMNS}
        params["created_at"] = clock.now()
        result = await self._session.execute(_INSERT_RECORDS, params)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def period_calls(
        self, periods: Sequence[tuple[uuid.UUID, datetime, datetime]]
    ) -> dict[uuid.UUID, int]:
        """Recorded calls (quantity) per subscription in its own [start, end), one query for all."""
        if not periods:
            return {}
        params = {
            "subscription_id": [p[0] for p in periods],
            "start": [p[1] for p in periods],
            "end": [p[2] for p in periods],
        }
        rows = await self._session.execute(_PERIOD_CALLS, params)
        return {row[0]: int(row[1]) for row in rows}

    async def subscriptions(self, ids: Sequence[uuid.UUID]) -> list[Subscription]:
        if not ids:
            return []
        statement = select(Subscription).where(Subscription.id.in_(ids)).order_by(Subscription.id)
        return list((await self._session.execute(statement)).scalars().all())

    async def claim_unreported(self, subscription_ids: Sequence[uuid.UUID]) -> list[Unreported]:
        """Pay-per-use windows not yet sent to Stripe, locked (SKIP LOCKED) for this transaction."""
        statement = (
            select(
                UsageRecord.id,
                UsageRecord.subscription_id,
                Subscription.api_id,
                Consumer.stripe_customer_id,
                UsageRecord.quantity,
                UsageRecord.meter_event_identifier,
                UsageRecord.window_end,
            )
            .join(Subscription, Subscription.id == UsageRecord.subscription_id)
            .join(Consumer, Consumer.id == Subscription.consumer_id)
            .where(
                UsageRecord.subscription_id.in_(subscription_ids),
                UsageRecord.reported_at.is_(None),
                UsageRecord.meter_event_identifier.is_not(None),
                Consumer.stripe_customer_id.is_not(None),
            )
            .order_by(UsageRecord.window_start)
            .with_for_update(of=UsageRecord, skip_locked=True)
        )
        return [
            Unreported(
                id=row[0],
                subscription_id=row[1],
                api_id=row[2],
                stripe_customer_id=str(row[3]),
                quantity=row[4],
                identifier=str(row[5]),
                window_end=row[6],
            )
            for row in (await self._session.execute(statement)).all()
        ]

    async def mark_reported(self, record_ids: Sequence[uuid.UUID], at: datetime) -> None:
        if record_ids:
            await self._session.execute(
                update(UsageRecord).where(UsageRecord.id.in_(record_ids)).values(reported_at=at)
            )
