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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.earnings.collected import creator_amounts, invoice_collected, proportional_shares
from app.models import Api, Earning, Invoice, PricingPlan, PricingPlanVersion, Subscription
from app.money import split_commission
from app.payouts.reversals import settle_invoice_reversals


@dataclass(frozen=True, slots=True)
class EarningLine:
    """One ledger line a paid invoice books for a plan: a `charge` or a `credit`."""

    api_id: str
    creator_id: str
    plan_id: uuid.UUID
    kind: str
    gross: int
    commission: int
    net: int


def plan_sums(
    lines: Iterable[tuple[str | None, int]],
    plan_of_price: Mapping[str, uuid.UUID],
    fallback_plan: uuid.UUID | None,
) -> dict[uuid.UUID, int]:
    """Per plan, the sum of an invoice's (price id, amount after line discounts) lines: each line
    belongs to the plan of its price, else to the invoice's subscription's plan (credits negative)."""
    sums: dict[uuid.UUID, int] = defaultdict(int)
    for price_id, amount in lines:
        plan_id = plan_of_price.get(str(price_id)) or fallback_plan
        if plan_id is not None:
            sums[plan_id] += amount
    return dict(sums)


def earning_lines(
    by_plan: Mapping[uuid.UUID, int],
    owners: Mapping[uuid.UUID, tuple[str, str]],
    *,
    total: int,
    collected: int,
    rate: Decimal,
) -> list[EarningLine]:
    """The lines a paid invoice books, from its plans' sums (`plan_sums`), each plan's
    (api_id, creator_id), the invoice's `total` and what it collected (`amount_collected`)."""
    plans_of_api: dict[tuple[str, str], list[uuid.UUID]] = defaultdict(list)
    for plan_id in by_plan:
        if plan_id in owners:
            plans_of_api[owners[plan_id]].append(plan_id)
    nets = {api: sum(by_plan[plan] for plan in plans) for api, plans in plans_of_api.items()}
    amounts = creator_amounts(nets, total=total, collected=collected)
    lines: list[EarningLine] = []
    for api, plans in sorted(plans_of_api.items()):
        for sign, amount in ((1, amounts.charges.get(api, 0)), (-1, amounts.credits.get(api, 0))):
            if amount <= 0:
                continue
            kind = "charge" if sign > 0 else "credit"
            weighted = sorted((plan for plan in plans if sign * by_plan[plan] > 0), key=str)
            shares = proportional_shares(amount, [sign * by_plan[plan] for plan in weighted])
            for plan, gross in zip(weighted, shares, strict=True):
                if gross > 0:
                    commission, net = split_commission(gross, rate)
                    lines.append(EarningLine(api[0], api[1], plan, kind, gross, commission, net))
    return lines


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
    lines = earning_lines(
        by_plan,
        {plan_id: (api_id, creator_id) for plan_id, api_id, creator_id in owners.all()},
        total=invoice.total,
        collected=invoice_collected(invoice),
        rate=rate,
    )
    charges = [_row(invoice, line) for line in lines if line.kind == "charge"]
    credits = [_row(invoice, line) for line in lines if line.kind == "credit"]
    added = await _insert_once(session, charges, "charge") + await _insert_once(session, credits, "credit")
    if charges and added:
        # A refund or dispute may have been recorded before the charges were booked.
        await settle_invoice_reversals(session, invoice, reference=invoice.stripe_invoice_id)
    return added


async def _plan_sums(session: AsyncSession, invoice: Invoice) -> dict[uuid.UUID, int]:
    """`plan_sums` of our mirror of the invoice, its prices' plans read from the catalog."""
    price_ids = {str(line["price_id"]) for line in invoice.lines if line.get("price_id")}
    plan_of_price: dict[str, uuid.UUID] = {}
    if price_ids:
        # A version bills through two prices: its plan's, and its metered overage price.
        prices = await session.execute(
            select(
                PricingPlanVersion.stripe_price_id,
                PricingPlanVersion.stripe_overage_price_id,
                PricingPlanVersion.plan_id,
            ).where(
                or_(
                    PricingPlanVersion.stripe_price_id.in_(price_ids),
                    PricingPlanVersion.stripe_overage_price_id.in_(price_ids),
                )
            )
        )
        for price, overage_price, plan in prices.all():
            for billed in (price, overage_price):
                if billed is not None:
                    plan_of_price[str(billed)] = plan
    fallback_plan: uuid.UUID | None = None
    if invoice.subscription_id is not None:
        fallback_plan = (
            await session.execute(
                select(Subscription.pricing_plan_id).where(Subscription.id == invoice.subscription_id)
            )
        ).scalar_one_or_none()
    lines = (
        (line.get("price_id"), int(line.get("amount") or 0) - int(line.get("discount") or 0))
        for line in invoice.lines
    )
    return plan_sums(lines, plan_of_price, fallback_plan)


def _row(invoice: Invoice, line: EarningLine) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "creator_id": line.creator_id,
        "api_id": line.api_id,
        "plan_id": line.plan_id,
        "invoice_id": invoice.id,
        "subscription_id": invoice.subscription_id,
        "kind": line.kind,
        # A charge matures before it is paid out; a credit is deducted from the next payout at once.
        "status": "pending" if line.kind == "charge" else "available",
        "currency": invoice.currency,
        "gross_amount": line.gross,
        "commission_amount": line.commission,
        "net_amount": line.net,
        "reference": None if line.kind == "charge" else invoice.stripe_invoice_id,
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
