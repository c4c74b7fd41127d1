"""Creator earnings booked from a paid invoice, exactly once per (invoice, plan).

Gross is the sum of the invoice's lines for that plan after line discounts, before tax (tax is
not the creator's). Commission is `gross x rate` rounded half-up to the minor unit; the
creator's net is `gross - commission`, so the two always add up to the gross.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.models import Api, Earning, Invoice, PricingPlan, PricingPlanVersion, Subscription
from app.money import split_commission
from app.payouts.reversals import settle_invoice_reversals


async def book_invoice_earnings(session: AsyncSession, invoice: Invoice, rate: Decimal) -> int:
    """Book the creator lines of a paid invoice; returns how many this call added (0 on a repeat)."""
    if invoice.status != "paid":
        return 0
    price_ids = {str(line["price_id"]) for line in invoice.lines if line.get("price_id")}
    plan_of_price: dict[str, uuid.UUID] = {}
    if price_ids:
        prices = await session.execute(
            select(PricingPlanVersion.stripe_price_id, PricingPlanVersion.plan_id).where(
                PricingPlanVersion.stripe_price_id.in_(price_ids)
            )
        )
        plan_of_price = {str(price): plan for price, plan in prices.all()}
    fallback_plan: uuid.UUID | None = None
    if invoice.subscription_id is not None:
        fallback_plan = (
            await session.execute(
                select(Subscription.pricing_plan_id).where(Subscription.id == invoice.subscription_id)
            )
        ).scalar_one_or_none()

    gross: dict[uuid.UUID, int] = defaultdict(int)
    for line in invoice.lines:
        plan_id = plan_of_price.get(str(line.get("price_id"))) or fallback_plan
        if plan_id is not None:
            gross[plan_id] += int(line.get("amount") or 0) - int(line.get("discount") or 0)
    payable = {plan_id: amount for plan_id, amount in gross.items() if amount > 0}
    if not payable:
        return 0
    owners = await session.execute(
        select(PricingPlan.id, Api.api_id, Api.creator_id)
        .join(Api, Api.api_id == PricingPlan.api_id)
        .where(PricingPlan.id.in_(payable))
    )
    rows: list[dict[str, Any]] = []
    for plan_id, api_id, creator_id in owners.all():
        commission, net = split_commission(payable[plan_id], rate)
        rows.append(
            {
                "id": uuid.uuid4(),
                "creator_id": creator_id,
                "api_id": api_id,
                "plan_id": plan_id,
                "invoice_id": invoice.id,
                "subscription_id": invoice.subscription_id,
                "kind": "charge",
                "status": "pending",
                "currency": invoice.currency,
                "gross_amount": payable[plan_id],
                "commission_amount": commission,
                "net_amount": net,
                "earned_at": invoice.paid_at or clock.now(),
            }
        )
    if not rows:
        return 0
    statement = (
        insert(Earning)
        .values(rows)
        .on_conflict_do_nothing(
            index_elements=[Earning.invoice_id, Earning.plan_id], index_where=text("kind = 'charge'")
        )
        .returning(Earning.id)
    )
    added = len((await session.execute(statement)).scalars().all())
    if added:
        # A refund or dispute may have been recorded before the charges were booked.
        await settle_invoice_reversals(session, invoice, reference=invoice.stripe_invoice_id)
    return added
