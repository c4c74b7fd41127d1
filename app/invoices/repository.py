from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Consumer, Earning, Invoice, PricingPlan, PricingPlanVersion


class InvoiceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def list_for_user(
        self,
        user_id: str,
        *,
        status: str | None,
        subscription_id: uuid.UUID | None,
        created_from: datetime | None,
        created_before: datetime | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[Invoice]:
        """Newest first, keyset-paginated on (created_at, id) over ix_invoices_consumer_created."""
        statement = (
            select(Invoice)
            .join(Consumer, Consumer.id == Invoice.consumer_id)
            .where(Consumer.user_id == user_id)
            .order_by(Invoice.created_at.desc(), Invoice.id.desc())
            .limit(limit)
        )
        if status is not None:
            statement = statement.where(Invoice.status == status)
        if subscription_id is not None:
            statement = statement.where(Invoice.subscription_id == subscription_id)
        if created_from is not None:
            statement = statement.where(Invoice.created_at >= created_from)
        if created_before is not None:
            statement = statement.where(Invoice.created_at < created_before)
        if after is not None:
            statement = statement.where(tuple_(Invoice.created_at, Invoice.id) < tuple_(*after))
        return (await self._session.execute(statement)).scalars().all()

    async def get_with_consumer(self, invoice_id: uuid.UUID) -> tuple[Invoice, Consumer] | None:
        statement = (
            select(Invoice, Consumer)
            .join(Consumer, Consumer.id == Invoice.consumer_id)
            .where(Invoice.id == invoice_id)
        )
        row = (await self._session.execute(statement)).one_or_none()
        return (row[0], row[1]) if row else None

    async def get_by_stripe_id(self, stripe_invoice_id: str) -> Invoice | None:
        statement = select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id)
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def plan_names(self, plan_ids: set[uuid.UUID]) -> dict[str, str]:
        if not plan_ids:
            return {}
        rows = await self._session.execute(
            select(PricingPlan.id, PricingPlan.name).where(PricingPlan.id.in_(plan_ids))
        )
        return {str(plan_id): name for plan_id, name in rows}

    async def plans_of_prices(self, price_ids: set[str]) -> dict[str, tuple[str, str]]:
        """Stripe price id -> (plan id, plan name), for lines that name only their price."""
        if not price_ids:
            return {}
        rows = await self._session.execute(
            select(PricingPlanVersion.stripe_price_id, PricingPlan.id, PricingPlan.name)
            .join(PricingPlan, PricingPlan.id == PricingPlanVersion.plan_id)
            .where(PricingPlanVersion.stripe_price_id.in_(price_ids))
        )
        return {str(price): (str(plan_id), name) for price, plan_id, name in rows}

    async def get_consumer(self, consumer_id: uuid.UUID) -> Consumer | None:
        return await self._session.get(Consumer, consumer_id)


async def link_to_subscription(
    session: AsyncSession, subscription_id: uuid.UUID, consumer_id: uuid.UUID, stripe_subscription_id: str
) -> None:
    """Point at our subscription the consumer's invoices of `stripe_subscription_id` mirrored
    before any row of ours followed it (their lines name it), and every earnings line of the
    subscription's invoices that names no subscription. Idempotent: only what names none moves."""
    await session.execute(
        update(Invoice)
        .where(
            Invoice.consumer_id == consumer_id,
            Invoice.subscription_id.is_(None),
            Invoice.lines.contains([{"subscription": stripe_subscription_id}]),
        )
        .values(subscription_id=subscription_id)
    )
    await link_earnings(session, subscription_id)


async def link_earnings(
    session: AsyncSession, subscription_id: uuid.UUID, *, invoice_id: uuid.UUID | None = None
) -> None:
    """Name `subscription_id` on the earnings lines of its invoices (or of `invoice_id` only) that
    name no subscription: booked while the invoice was not yet linked to it."""
    invoices = select(Invoice.id).where(Invoice.subscription_id == subscription_id)
    if invoice_id is not None:
        invoices = invoices.where(Invoice.id == invoice_id)
    await session.execute(
        update(Earning)
        .where(Earning.subscription_id.is_(None), Earning.invoice_id.in_(invoices))
        .values(subscription_id=subscription_id)
    )
