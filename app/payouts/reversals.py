"""Refunds and lost disputes take back what a paid invoice earned its creators.

The ledger is append-only: a refund books `reversal` lines beside the invoice's `charge` lines
(one per plan, as the charges), which analytics count negative and the next payout nets off.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Earning
from app.money import split_commission


def proportional_shares(amount: int, weights: list[int]) -> list[int]:
    """`amount` split in proportion to `weights`, in whole minor units summing exactly to `amount`
    (largest remainders get the leftover units, earlier lines first on ties)."""
    total = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    exact = [Decimal(amount) * w / total for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: amount - sum(shares)]:
        shares[i] += 1
    return shares


async def reverse_invoice_earnings(
    session: AsyncSession, *, invoice_id: uuid.UUID, reversed_total: int
) -> int:
    """Book the reversal of `reversed_total` (cumulative, as Stripe's `amount_refunded` or a lost
    dispute's amount) of a paid invoice; returns how many reversal lines changed.

    Idempotent and safe out of order: a line only ever grows to the newest cumulative amount, so a
    repeated or older event books nothing. A reversal already netted by a payout is not changed;
    a later, larger refund of that invoice is then left to support (logged by the caller).
    """
    charges = (
        (
            await session.execute(
                select(Earning)
                .where(Earning.invoice_id == invoice_id, Earning.kind == "charge")
                .order_by(Earning.plan_id)
            )
        )
        .scalars()
        .all()
    )
    if not charges:
        return 0
    gross_total = sum(c.gross_amount for c in charges)
    shares = proportional_shares(min(reversed_total, gross_total), [c.gross_amount for c in charges])
    changed = 0
    for charge, gross in zip(charges, shares, strict=True):
        if gross <= 0:
            continue
        # The commission comes back at the rate the charge was booked at; a full reversal is exact.
        commission, net = split_commission(gross, Decimal(charge.commission_amount) / charge.gross_amount)
        statement = insert(Earning).values(
            id=uuid.uuid4(),
            creator_id=charge.creator_id,
            api_id=charge.api_id,
            plan_id=charge.plan_id,
            invoice_id=charge.invoice_id,
            subscription_id=charge.subscription_id,
            kind="reversal",
            status="available",  # deducted from the next payout at once
            currency=charge.currency,
            gross_amount=gross,
            commission_amount=commission,
            net_amount=net,
        )
        statement = statement.on_conflict_do_update(
            constraint="uq_earnings_invoice_plan_kind",
            set_={
                "gross_amount": statement.excluded.gross_amount,
                "commission_amount": statement.excluded.commission_amount,
                "net_amount": statement.excluded.net_amount,
            },
            where=(Earning.gross_amount < statement.excluded.gross_amount) & Earning.payout_id.is_(None),
        )
        result = await session.execute(statement)
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed
