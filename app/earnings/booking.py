"""Creator earnings booked from a paid invoice, exactly once per (invoice, plan).

Each line belongs to the plan of its price (else to the invoice's subscription's plan), each plan
to an API and its creator. Amounts follow the money collected (`app.earnings.collected`): the
lines of an API are netted, credit lines included (after line discounts, before tax: tax is not
the creator's); an API with a net charge books a `charge` of its share of what was collected, an
API with a net credit books a `credit` that takes it back. Within an API the amount goes to its
plans in proportion to their lines of that sign (an upgrade's charge to the new plan, a
downgrade's credit to the old one). Commission is `gross x rate` rounded half-up to the minor
unit; the creator's net is `gross - commission`, so the two always add up to the gross.
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
from app.earnings.collected import creator_amounts, invoice_collected, proportional_shares
from app.models import Api, Earning, Invoice, PricingPlan, PricingPlanVersion, Subscription
from app.money import split_commission
from app.payouts.reversals import settle_invoice_reversals


async def book_invoice_earnings(session: AsyncSession, invoice: Invoice, rate: Decimal) -> int:
    """Book the creator lines of a paid invoice; returns how many this call added (0 on a repeat)."""
    if invoice.status != "paid":
        return 0
    by_plan = await _plan_sums(session, invoice)
    if not by_plan:
        return 0
    owners = await session.execute(
        select(PricingPlan.id, Api.api_id, Api.creator_id)
        .join(Api, Api.api_id == PricingPlan.api_id)
        .where(PricingPlan.id.in_(by_plan))
    )
    plans_of_api: dict[tuple[str, str], list[uuid.UUID]] = defaultdict(list)
    for plan_id, api_id, creator_id in owners.all():
        plans_of_api[(api_id, creator_id)].append(plan_id)
    nets = {api: sum(by_plan[plan] for plan in plans) for api, plans in plans_of_api.items()}
    amounts = creator_amounts(nets, total=invoice.total, collected=invoice_collected(invoice))
    charges: list[dict[str, Any]] = []
    credits: list[dict[str, Any]] = []
    for api, plans in sorted(plans_of_api.items()):
        for sign, amount, rows in (
            (1, amounts.charges.get(api, 0), charges),
            (-1, amounts.credits.get(api, 0), credits),
        ):
            if amount <= 0:
                continue
            kind = "charge" if sign > 0 else "credit"
            weighted = sorted((plan for plan in plans if sign * by_plan[plan] > 0), key=str)
            shares = proportional_shares(amount, [sign * by_plan[plan] for plan in weighted])
            rows.extend(
                _line(invoice, api, plan, kind, gross, rate)
                for plan, gross in zip(weighted, shares, strict=True)
                if gross > 0
            )
    added = await _insert_once(session, charges, "charge") + await _insert_once(session, credits, "credit")
    if charges and added:
        # A refund or dispute may have been recorded before the charges were booked.
        await settle_invoice_reversals(session, invoice, reference=invoice.stripe_invoice_id)
    return added


async def _plan_sums(session: AsyncSession, invoice: Invoice) -> dict[uuid.UUID, int]:
    """Per plan, the sum of the invoice's lines for it after line discounts (credits negative)."""
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
    sums: dict[uuid.UUID, int] = defaultdict(int)
    for line in invoice.lines:
        plan_id = plan_of_price.get(str(line.get("price_id"))) or fallback_plan
        if plan_id is not None:
            sums[plan_id] += int(line.get("amount") or 0) - int(line.get("discount") or 0)
    return dict(sums)


def _line(
    invoice: Invoice, api: tuple[str, str], plan_id: uuid.UUID, kind: str, gross: int, rate: Decimal
) -> dict[str, Any]:
    commission, net = split_commission(gross, rate)
    api_id, creator_id = api
    return {
        "id": uuid.uuid4(),
        "creator_id": creator_id,
        "api_id": api_id,
        "plan_id": plan_id,
        "invoice_id": invoice.id,
        "subscription_id": invoice.subscription_id,
        "kind": kind,
        # A charge matures before it is paid out; a credit is deducted from the next payout at once.
        "status": "pending" if kind == "charge" else "available",
        "currency": invoice.currency,
        "gross_amount": gross,
        "commission_amount": commission,
        "net_amount": net,
        "reference": None if kind == "charge" else invoice.stripe_invoice_id,
        "earned_at": invoice.paid_at or clock.now(),
    }


async def _insert_once(session: AsyncSession, rows: list[dict[str, Any]], kind: str) -> int:
    """Insert the lines of one kind; those already booked for their (invoice, plan) are skipped."""
    if not rows:
        return 0
    statement = (
        insert(Earning)
        .values(rows)
        .on_conflict_do_nothing(
            index_elements=[Earning.invoice_id, Earning.plan_id], index_where=text(f"kind = '{kind}'")
        )
        .returning(Earning.id)
    )
    return len((await session.execute(statement)).scalars().all())
