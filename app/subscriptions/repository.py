from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BindParameter, DateTime, Select, and_, bindparam, func, literal_column, or_, select
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Bundle

from app.models import PricingPlan, PricingPlanVersion, Subscription, UsageRecord
from app.models.subscription import LIVE_STATUSES

_HELD_VERSION = and_(
    PricingPlanVersion.plan_id == Subscription.pricing_plan_id,
    PricingPlanVersion.version == Subscription.plan_version,
)
SubscriptionRow = tuple[Subscription, PricingPlan, PricingPlanVersion]
# Column bundles read like the ORM objects (same attribute names) without their bookkeeping.
_SUBSCRIPTION: Bundle[Any] = Bundle("subscription", *Subscription.__table__.c)
_PLAN: Bundle[Any] = Bundle("plan", *PricingPlan.__table__.c)
_VERSION: Bundle[Any] = Bundle("version", *PricingPlanVersion.__table__.c)


def _page_statement(*, by_status: bool, after: bool) -> Select[Any]:
    statement = (
        select(_SUBSCRIPTION, _PLAN, _VERSION)
        .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(PricingPlanVersion, _HELD_VERSION)
        .where(Subscription.consumer_id == bindparam("consumer_id"))
        .order_by(Subscription.created_at.desc(), Subscription.id.desc())
        .limit(bindparam("limit"))
    )
    if by_status:
        statement = statement.where(Subscription.status == bindparam("status"))
    if after:
        created_at: BindParameter[datetime] = bindparam("after_created_at")
        last_id: BindParameter[uuid.UUID] = bindparam("after_id")
        statement = statement.where(
            or_(
                Subscription.created_at < created_at,
                and_(Subscription.created_at == created_at, Subscription.id < last_id),
            )
        )
    return statement


_PAGE_STATEMENTS = {
    (by_status, after): _page_statement(by_status=by_status, after=after)
    for by_status in (False, True)
    for after in (False, True)
}

# The period sum, rendered once from the model into the driver's own SQL ($1, $2, $3).
_RECORDED_USAGE_SQL = str(
    select(
        func.coalesce(func.sum(UsageRecord.quantity), literal_column("0")),
        func.coalesce(func.sum(UsageRecord.successful_calls), literal_column("0")),
        func.coalesce(func.sum(UsageRecord.failed_calls), literal_column("0")),
    )
    .where(
        # Billed in the period holding its meter event's instant (app.usage.windows); windows
        # lie within one day, so the window_start bounds only narrow the index scan.
        UsageRecord.subscription_id == bindparam("subscription_id"),
        UsageRecord.window_start
        > bindparam("start", type_=DateTime(timezone=True)) - literal_column("interval '1 day'"),
        UsageRecord.window_start < bindparam("end"),
        UsageRecord.window_end - literal_column("interval '1 second'")
        >= bindparam("start", type_=DateTime(timezone=True)),
        UsageRecord.window_end - literal_column("interval '1 second'")
        < bindparam("end", type_=DateTime(timezone=True)),
    )
    .compile(dialect=postgresql_asyncpg.dialect())  # type: ignore[no-untyped-call]
)


class SubscriptionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        # The session's own asyncpg connection, asked for once per session transaction.
        self._driver: Any = None
        self._driver_transaction: object = None

    async def get_owned(
        self, subscription_id: uuid.UUID, consumer_id: uuid.UUID, *, for_update: bool = False
    ) -> Subscription | None:
        statement = select(Subscription).where(
            Subscription.id == subscription_id, Subscription.consumer_id == consumer_id
        )
        if for_update:
            # FOR NO KEY UPDATE: serialises changes of the row without blocking the usage windows
            # recorded for it meanwhile (their foreign key only takes a key-share lock).
            statement = statement.with_for_update(key_share=True)
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def live_on_api(self, consumer_id: uuid.UUID, api_id: str) -> Subscription | None:
        statement = select(Subscription).where(
            Subscription.consumer_id == consumer_id,
            Subscription.api_id == api_id,
            Subscription.status.in_(LIVE_STATUSES),
        )
        return (await self._session.execute(statement)).scalars().first()

    async def count_on_api(self, consumer_id: uuid.UUID, api_id: str) -> int:
        """How many subscriptions (of any status) the consumer has had to the API."""
        statement = select(func.count()).where(
            Subscription.consumer_id == consumer_id, Subscription.api_id == api_id
        )
        return int((await self._session.execute(statement)).scalar_one())

    async def page(
        self,
        consumer_id: uuid.UUID,
        *,
        status: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[SubscriptionRow]:
        """Newest first, by (created_at, id) so pages never skip or repeat a row; with the plan
        version each subscription holds, in one query.

        Rows come back as plain column bundles rather than ORM instances, and the statement is
        built once per shape: a list is read-only, and this is the hottest read path.
        """
        statement = _PAGE_STATEMENTS[(status is not None, after is not None)]
        params: dict[str, object] = {"consumer_id": consumer_id, "limit": limit, "status": status}
        if after is not None:
            params["after_created_at"], params["after_id"] = after
        rows = await self._session.execute(statement, params)
        return [cast("SubscriptionRow", (s, plan, version)) for s, plan, version in rows]

    async def recorded_usage(
        self, subscription_id: uuid.UUID, start: datetime, end: datetime
    ) -> tuple[int, int, int]:
        """Sums of the usage records billed in [start, end) (their meter event falls inside).

        The sum reads a few rows of the (subscription_id, window_start) index in well under
        0.1 ms, less than SQLAlchemy's own cost per statement; so the statement, rendered once
        from the model, goes to the driver on the session's connection (same transaction), where
        asyncpg keeps it prepared.
        """
        transaction = self._session.sync_session.get_transaction()
        if self._driver is None or self._driver_transaction is not transaction:
            raw = await (await self._session.connection()).get_raw_connection()
            self._driver = raw.driver_connection
            self._driver_transaction = self._session.sync_session.get_transaction()
        row = await self._driver.fetchrow(_RECORDED_USAGE_SQL, subscription_id, start, end)
        return int(row[0]), int(row[1]), int(row[2])

    def add(self, subscription: Subscription) -> None:
        self._session.add(subscription)

    async def flush(self) -> None:
        await self._session.flush()
