"""Queries of `billing reconcile`: reads of our store a page at a time, and the report's rows."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    Api,
    Consumer,
    Earning,
    Invoice,
    InvoiceReversal,
    PricingPlan,
    PricingPlanVersion,
    ReconcileDrift,
    ReconcileRun,
    ReconcileSeen,
    Subscription,
    UsageRecord,
)
from app.models.earning import NEGATIVE_KINDS
from app.models.subscription import LIVE_STATUSES
from app.reconcile.rows import Drift, InvoiceRow, PlanCatalog
from app.usage.windows import METER_STAMP_OFFSET


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    id: uuid.UUID
    status: str
    stripe_subscription_id: str | None
    currency: str
    monthly_amount: int | None


@dataclass(frozen=True, slots=True)
class MeteredRow:
    id: uuid.UUID
    meter_id: str
    stripe_customer_id: str
    currency: str
    price_per_call: Decimal | None
    current_period_start: datetime | None
    current_period_end: datetime | None


@dataclass(frozen=True, slots=True)
class CheckTotals:
    items: int
    cents: dict[str, int]  # per currency ("" when the drift has none)


def _subscription_columns() -> tuple[object, ...]:
    return (
        Subscription.id,
        Subscription.status,
        Subscription.stripe_subscription_id,
        PricingPlanVersion.currency,
        PricingPlanVersion.monthly_amount,
    )


class ReconcileRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    # --- invoices and earnings ---------------------------------------------------------------

    async def invoices(self, stripe_ids: Sequence[str]) -> dict[str, InvoiceRow]:
        rows = await self._session.execute(
            select(
                Invoice.stripe_invoice_id, Invoice.id, Invoice.status, Invoice.currency,
                Invoice.total, Invoice.amount_paid, Invoice.subscription_id,
            ).where(Invoice.stripe_invoice_id.in_(stripe_ids))
        )  # fmt: skip
        return {row[0]: InvoiceRow(*row[1:]) for row in rows.all()}

    async def invoices_not_seen(
        self,
        run_id: uuid.UUID,
        *,
        since: datetime | None,
        created_before: datetime,
        after: uuid.UUID | None,
        limit: int,
    ) -> tuple[dict[str, InvoiceRow], uuid.UUID | None]:
        """A page (by id) of our invoices mirrored before the run (and since `since`); those the
        run's Stripe listing did not show come back by Stripe id, with the page's last id."""
        page = select(Invoice.id).where(Invoice.created_at < created_before).order_by(Invoice.id).limit(limit)
        if since is not None:
            page = page.where(Invoice.created_at >= since)
        if after is not None:
            page = page.where(Invoice.id > after)
        ids = list((await self._session.execute(page)).scalars().all())
        if not ids:
            return {}, None
        seen = select(ReconcileSeen.stripe_id).where(
            ReconcileSeen.run_id == run_id, ReconcileSeen.kind == "invoice"
        )
        rows = await self._session.execute(
            select(
                Invoice.stripe_invoice_id, Invoice.id, Invoice.status, Invoice.currency,
                Invoice.total, Invoice.amount_paid, Invoice.subscription_id,
            ).where(Invoice.id.in_(ids), Invoice.stripe_invoice_id.not_in(seen))
        )  # fmt: skip
        return {row[0]: InvoiceRow(*row[1:]) for row in rows.all()}, ids[-1]

    async def our_customers(self, customer_ids: Sequence[str]) -> set[str]:
        rows = await self._session.execute(
            select(Consumer.stripe_customer_id).where(Consumer.stripe_customer_id.in_(customer_ids))
        )
        return {str(customer) for customer in rows.scalars().all()}

    async def ledger_nets(self, invoice_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[uuid.UUID, int]]:
        """Per invoice and plan, the creators' net in the ledger: charges and reinstatements, less
        credits and reversals."""
        sign = case((Earning.kind.in_(NEGATIVE_KINDS), -1), else_=1)
        rows = await self._session.execute(
            select(Earning.invoice_id, Earning.plan_id, func.sum(sign * Earning.net_amount))
            .where(Earning.invoice_id.in_(invoice_ids))
            .group_by(Earning.invoice_id, Earning.plan_id)
        )
        nets: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
        for invoice_id, plan_id, net in rows.all():
            nets[invoice_id][plan_id] = int(net)
        return dict(nets)

    async def plan_catalog(
        self, price_ids: Sequence[str], stripe_subscription_ids: Sequence[str]
    ) -> PlanCatalog:
        """The plans of these Stripe prices and of our rows of these Stripe subscriptions, with
        each plan's API and creator."""
        plan_of_price: dict[str, uuid.UUID] = {}
        if price_ids:
            prices = await self._session.execute(
                select(PricingPlanVersion.stripe_price_id, PricingPlanVersion.plan_id).where(
                    PricingPlanVersion.stripe_price_id.in_(price_ids)
                )
            )
            plan_of_price = {str(price): plan for price, plan in prices.all()}
        plan_of_subscription: dict[str, uuid.UUID] = {}
        if stripe_subscription_ids:
            subscriptions = await self._session.execute(
                select(Subscription.stripe_subscription_id, Subscription.pricing_plan_id).where(
                    Subscription.stripe_subscription_id.in_(stripe_subscription_ids)
                )
            )
            plan_of_subscription = {str(sub): plan for sub, plan in subscriptions.all()}
        plan_ids = set(plan_of_price.values()) | set(plan_of_subscription.values())
        owners: dict[uuid.UUID, tuple[str, str]] = {}
        if plan_ids:
            found = await self._session.execute(
                select(PricingPlan.id, Api.api_id, Api.creator_id)
                .join(Api, Api.api_id == PricingPlan.api_id)
                .where(PricingPlan.id.in_(plan_ids))
            )
            owners = {plan: (api_id, creator_id) for plan, api_id, creator_id in found.all()}
        return PlanCatalog(plan_of_price, plan_of_subscription, owners)

    async def reversed_totals(self, invoice_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Per invoice, what its refunds and disputes take back now (as Stripe last showed them)."""
        rows = await self._session.execute(
            select(InvoiceReversal.invoice_id, func.sum(InvoiceReversal.amount))
            .where(InvoiceReversal.invoice_id.in_(invoice_ids))
            .group_by(InvoiceReversal.invoice_id)
        )
        return {invoice_id: int(total) for invoice_id, total in rows.all()}

    # --- orphans -----------------------------------------------------------------------------

    async def subscriptions(self, stripe_ids: Sequence[str]) -> dict[str, SubscriptionRow]:
        rows = await self._session.execute(
            select(*_subscription_columns())  # type: ignore[call-overload]
            .join(
                PricingPlanVersion,
                (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
                & (PricingPlanVersion.version == Subscription.plan_version),
            )
            .where(Subscription.stripe_subscription_id.in_(stripe_ids))
        )
        return {str(row[2]): SubscriptionRow(*row) for row in rows.all()}

    async def subscription(self, subscription_id: uuid.UUID) -> SubscriptionRow | None:
        row = (
            await self._session.execute(
                select(*_subscription_columns())  # type: ignore[call-overload]
                .join(
                    PricingPlanVersion,
                    (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
                    & (PricingPlanVersion.version == Subscription.plan_version),
                )
                .where(Subscription.id == subscription_id)
            )
        ).one_or_none()
        return SubscriptionRow(*row) if row is not None else None

    async def live_rows_not_seen(
        self, run_id: uuid.UUID, *, created_before: datetime, after: uuid.UUID | None, limit: int
    ) -> tuple[list[SubscriptionRow], uuid.UUID | None]:
        """A page (by id) of our live Stripe-billed rows older than the run; those whose Stripe
        subscription the run did not list come back, with the page's last id (None: no more)."""
        page = (
            select(Subscription.id)
            .where(
                Subscription.status.in_(LIVE_STATUSES),
                Subscription.stripe_subscription_id.is_not(None),
                Subscription.created_at < created_before,
            )
            .order_by(Subscription.id)
            .limit(limit)
        )
        if after is not None:
            page = page.where(Subscription.id > after)
        ids = list((await self._session.execute(page)).scalars().all())
        if not ids:
            return [], None
        seen = select(ReconcileSeen.stripe_id).where(
            ReconcileSeen.run_id == run_id, ReconcileSeen.kind == "subscription"
        )
        rows = await self._session.execute(
            select(*_subscription_columns())  # type: ignore[call-overload]
            .join(
                PricingPlanVersion,
                (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
                & (PricingPlanVersion.version == Subscription.plan_version),
            )
            .where(Subscription.id.in_(ids), Subscription.stripe_subscription_id.not_in(seen))
            .order_by(Subscription.id)
        )
        return [SubscriptionRow(*row) for row in rows.all()], ids[-1]

    async def count_live_rows(
        self, *, created_before: datetime, after: uuid.UUID | None, upto: uuid.UUID
    ) -> int:
        statement = select(func.count()).where(
            Subscription.status.in_(LIVE_STATUSES),
            Subscription.stripe_subscription_id.is_not(None),
            Subscription.created_at < created_before,
            Subscription.id <= upto,
        )
        if after is not None:
            statement = statement.where(Subscription.id > after)
        return int((await self._session.execute(statement)).scalar_one())

    # --- usage -------------------------------------------------------------------------------

    async def metered_subscriptions(self, *, after: uuid.UUID | None, limit: int) -> list[MeteredRow]:
        """A page (by id) of pay-per-use subscriptions billed through a Stripe meter, any status."""
        statement = (
            select(
                Subscription.id, Api.stripe_meter_id, Consumer.stripe_customer_id,
                PricingPlanVersion.currency, PricingPlanVersion.price_per_call,
                Subscription.current_period_start, Subscription.current_period_end,
            )
            .join(Api, Api.api_id == Subscription.api_id)
            .join(Consumer, Consumer.id == Subscription.consumer_id)
            .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
            .join(
                PricingPlanVersion,
                (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
                & (PricingPlanVersion.version == Subscription.plan_version),
            )
            .where(
                PricingPlan.type == "pay_per_use",
                Subscription.stripe_subscription_id.is_not(None),
                Api.stripe_meter_id.is_not(None),
                Consumer.stripe_customer_id.is_not(None),
            )
            .order_by(Subscription.id)
            .limit(limit)
        )  # fmt: skip
        if after is not None:
            statement = statement.where(Subscription.id > after)
        return [
            MeteredRow(row[0], str(row[1]), str(row[2]), *row[3:])
            for row in (await self._session.execute(statement)).all()
        ]

    async def invoice_periods(
        self, subscription_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, set[tuple[datetime, datetime]]]:
        rows = await self._session.execute(
            select(Invoice.subscription_id, Invoice.period_start, Invoice.period_end)
            .where(
                Invoice.subscription_id.in_(subscription_ids),
                Invoice.period_start.is_not(None),
                Invoice.period_end > Invoice.period_start,
            )
            .distinct()
        )
        periods: dict[uuid.UUID, set[tuple[datetime, datetime]]] = defaultdict(set)
        for subscription_id, start, end in rows.all():
            if subscription_id is not None and start is not None and end is not None:
                periods[subscription_id].add((start, end))
        return periods

    async def metered_quantity(self, subscription_id: uuid.UUID, start: datetime, end: datetime) -> int:
        """Calls recorded in the windows whose meter event falls in [start, end)."""
        stamp = UsageRecord.window_end - METER_STAMP_OFFSET
        total = await self._session.execute(
            select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
                UsageRecord.subscription_id == subscription_id, stamp >= start, stamp < end
            )
        )
        return int(total.scalar_one())

    # --- the report --------------------------------------------------------------------------

    async def record(self, run_id: uuid.UUID, drifts: Sequence[Drift]) -> None:
        if not drifts:
            return
        statement = insert(ReconcileDrift).values(
            [
                {
                    "id": uuid.uuid4(), "run_id": run_id, "check_name": d.check, "subject": d.subject[:255],
                    "currency": d.currency, "ours": d.ours, "stripe": d.stripe, "drift_cents": d.cents,
                    "detail": d.detail,
                }
                for d in drifts
            ]
        )  # fmt: skip
        await self._session.execute(
            statement.on_conflict_do_nothing(
                index_elements=[ReconcileDrift.run_id, ReconcileDrift.check_name, ReconcileDrift.subject]
            )
        )

    async def mark_seen(self, run_id: uuid.UUID, kind: str, stripe_ids: Sequence[str]) -> None:
        if not stripe_ids:
            return
        statement = insert(ReconcileSeen).values(
            [{"run_id": run_id, "kind": kind, "stripe_id": stripe_id} for stripe_id in stripe_ids]
        )
        await self._session.execute(statement.on_conflict_do_nothing())

    async def forget_seen(self, run_id: uuid.UUID) -> None:
        await self._session.execute(delete(ReconcileSeen).where(ReconcileSeen.run_id == run_id))

    async def save_progress(
        self, run_id: uuid.UUID, cursor: dict[str, object], checked: dict[str, int]
    ) -> None:
        await self._session.execute(
            update(ReconcileRun).where(ReconcileRun.id == run_id).values(cursor=cursor, checked=checked)
        )

    async def totals(self, run_id: uuid.UUID) -> dict[str, CheckTotals]:
        rows = await self._session.execute(
            select(
                ReconcileDrift.check_name, ReconcileDrift.currency,
                func.count(), func.sum(ReconcileDrift.drift_cents),
            )
            .where(ReconcileDrift.run_id == run_id)
            .group_by(ReconcileDrift.check_name, ReconcileDrift.currency)
        )  # fmt: skip
        items: dict[str, int] = defaultdict(int)
        cents: dict[str, dict[str, int]] = defaultdict(dict)
        for check, currency, count, total in rows.all():
            items[check] += int(count)
            cents[check][currency or ""] = int(total)
        return {check: CheckTotals(items[check], cents[check]) for check in items}

    async def drifts(self, run_id: uuid.UUID, check: str, *, limit: int) -> list[ReconcileDrift]:
        """A check's drift lines, largest first."""
        rows = await self._session.execute(
            select(ReconcileDrift)
            .where(ReconcileDrift.run_id == run_id, ReconcileDrift.check_name == check)
            .order_by(ReconcileDrift.drift_cents.desc(), ReconcileDrift.subject)
            .limit(limit)
        )
        return list(rows.scalars().all())
