from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, DateTime, and_, bindparam, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import driver_connection
from app.db.statements import DriverStatement
from app.models import PricingPlan, PricingPlanVersion, Subscription, UsageRecord
from app.models.subscription import LIVE_STATUSES
from app.subscriptions.documents import PLAN_FIELDS, SUBSCRIPTION_FIELDS, VERSION_FIELDS
from app.usage.windows import billed_in

_HELD_VERSION = and_(
    PricingPlanVersion.plan_id == Subscription.pricing_plan_id,
    PricingPlanVersion.version == Subscription.plan_version,
)


def _document_sql(*, by_status: bool, after: bool, one: bool) -> DriverStatement:
    """The lean read's statement, rendered once from the model into the driver's own SQL. The
    columns are those `subscription_document` reads; a page is newest first by (created_at, id),
    so pages never skip or repeat a row."""
    columns = [
        *(Subscription.__table__.c[name] for name in SUBSCRIPTION_FIELDS),
        *(PricingPlan.__table__.c[name].label(f"plan_{name}") for name in PLAN_FIELDS),
        *(PricingPlanVersion.__table__.c[name].label(f"version_{name}") for name in VERSION_FIELDS),
    ]
    statement = (
        select(*columns)
        .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(PricingPlanVersion, _HELD_VERSION)
        .where(Subscription.consumer_id == bindparam("consumer_id"))
    )
    if one:
        statement = statement.where(Subscription.id == bindparam("subscription_id"))
    else:
        statement = statement.order_by(Subscription.created_at.desc(), Subscription.id.desc()).limit(
            bindparam("limit")
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
    return DriverStatement.compile(statement)


_PAGE_SQL = {
    (by_status, after): _document_sql(by_status=by_status, after=after, one=False)
    for by_status in (False, True)
    for after in (False, True)
}
_ONE_SQL = _document_sql(by_status=False, after=False, one=True)


# The period sum, rendered once from the model into the driver's own SQL ($1, $2, $3).
_RECORDED_USAGE_SQL = DriverStatement.compile(
    select(
        func.coalesce(func.sum(UsageRecord.quantity), literal_column("0")),
        func.coalesce(func.sum(UsageRecord.successful_calls), literal_column("0")),
        func.coalesce(func.sum(UsageRecord.failed_calls), literal_column("0")),
    ).where(
        UsageRecord.subscription_id == bindparam("subscription_id"),
        billed_in(
            UsageRecord.window_start,
            UsageRecord.window_end,
            bindparam("start", type_=DateTime(timezone=True)),
            bindparam("end", type_=DateTime(timezone=True)),
        ),
    )
).sql


async def fetch_page(
    connection: Any,
    consumer_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Mapping[str, Any]]:
    """A page of the consumer's subscriptions with the plan version each holds, in one query, as
    plain driver rows (the columns `subscription_document` reads), on any asyncpg connection (a
    session's, or a pooled read connection for the list's lean route): the hottest read path."""
    statement = _PAGE_SQL[(status is not None, after is not None)]
    params: dict[str, object] = {"consumer_id": consumer_id, "limit": limit, "status": status}
    if after is not None:
        params["after_created_at"], params["after_id"] = after
    rows: list[Mapping[str, Any]] = await connection.fetch(statement.sql, *statement.args(params))
    return rows


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

    async def owned_row(self, subscription_id: uuid.UUID, consumer_id: uuid.UUID) -> Mapping[str, Any] | None:
        """The consumer's subscription with its held plan version, as `fetch_page` gives them."""
        params = {"consumer_id": consumer_id, "subscription_id": subscription_id}
        row: Mapping[str, Any] | None = await (await driver_connection(self._session)).fetchrow(
            _ONE_SQL.sql, *_ONE_SQL.args(params)
        )
        return row

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


def as_uuid(value: Any) -> uuid.UUID | None:
    """A UUID from Stripe metadata, or None when it is missing or not one."""
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


async def find_subscription(
    session: AsyncSession,
    *,
    stripe_subscription_id: str | None = None,
    checkout_session_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Subscription | None:
    """Our subscription for a Stripe object, locked: by Stripe id, checkout session or metadata.

    FOR NO KEY UPDATE: it serialises event handlers without blocking usage rows that refer to it.
    """
    conditions = []
    if stripe_subscription_id:
        conditions.append(Subscription.stripe_subscription_id == stripe_subscription_id)
    if checkout_session_id:
        conditions.append(Subscription.stripe_checkout_session_id == checkout_session_id)
    our_id = as_uuid((metadata or {}).get("subscription_id"))
    if our_id is not None:
        # Only a row still waiting for its first Stripe subscription (our write of the Stripe id
        # may lag the event). A row that moved on (e.g. downgraded to free, detaching its old
        # Stripe subscription) must not be reached by that old subscription's late events.
        conditions.append(
            and_(
                Subscription.id == our_id,
                Subscription.stripe_subscription_id.is_(None),
                Subscription.status == "incomplete",
            )
        )
    for condition in conditions:
        found = (
            await session.execute(select(Subscription).where(condition).with_for_update(key_share=True))
        ).scalar_one_or_none()
        if found is not None:
            return found
    return None


async def was_detached(session: AsyncSession, metadata: dict[str, Any]) -> bool:
    """True when the metadata names a subscription of ours that no longer follows this Stripe one."""
    our_id = as_uuid(metadata.get("subscription_id"))
    return our_id is not None and await session.get(Subscription, our_id) is not None
