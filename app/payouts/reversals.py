"""Refunds and disputes take back what a paid invoice earned its creators.

Each Stripe refund or dispute of an invoice is kept at its newest state (`invoice_reversals`); the
invoice's reversed total is what they take back now. The ledger is append-only: whenever that
total changes, the difference per plan is booked as a new `reversal` line (or a `reinstatement`
when money comes back: a refund failed, a dispute was won), so a line a payout has already netted
is never touched and a later, larger refund is simply another line. Analytics count reversals
negative; the next payout nets them off.

Amounts: a refund or dispute of `x` out of what the invoice collected `C` (tax included, the part
paid from the customer's credit balance too: `app.earnings.collected`, the base the charges were
booked on) takes back `x * G / C` of the creators' booked gross `G` (all of it once `x >= C`, never
more), rounded half-up to the minor unit, then split over the invoice's plans in proportion to
their gross (largest remainders). Each plan's commission comes back at the rate its charge was
booked at (the whole commission on a full reversal), so gross = commission + net on every line.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import case, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.earnings.collected import invoice_collected, proportional_shares
from app.models import Earning, Invoice, InvoiceReversal
from app.money import split_commission
from app.stripe.shapes import StripeReversal

__all__ = ["proportional_shares"]  # re-exported: the one split of an amount over weights

# Refund statuses: Stripe returns the money unless the refund failed or was canceled.
REFUND_RANK = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}
REFUND_RETURNS_MONEY = frozenset({"pending", "requires_action", "succeeded"})
# Dispute statuses: the funds are withdrawn from the moment a chargeback opens (inquiries, the
# `warning_*` ones, withdraw nothing) until it is won; an appeal keeps them withdrawn.
DISPUTE_RANK = {
    "warning_needs_response": 0,
    "warning_under_review": 1,
    "needs_response": 2,
    "under_review": 3,
    "appeal_needs_response": 4,
    "appeal_under_review": 5,
    "lost": 6,
    "won": 6,
    "warning_closed": 6,
    "prevented": 6,
}
DISPUTE_WITHDRAWS = frozenset(
    {"needs_response", "under_review", "appeal_needs_response", "appeal_under_review", "lost"}
)


@dataclass(frozen=True, slots=True)
class ReversalState:
    """One refund or dispute as a Stripe object showed it: what it takes back in that state."""

    stripe_object_id: str
    source: str  # refund | dispute
    status: str
    amount: int
    rank: int

    @classmethod
    def of_refund(cls, refund: StripeReversal) -> ReversalState:
        takes = refund.amount if refund.status in REFUND_RETURNS_MONEY else 0
        return cls(refund.id, "refund", refund.status, takes, REFUND_RANK.get(refund.status, 0))

    @classmethod
    def of_dispute(cls, dispute: StripeReversal) -> ReversalState:
        takes = dispute.amount if dispute.status in DISPUTE_WITHDRAWS else 0
        return cls(dispute.id, "dispute", dispute.status, takes, DISPUTE_RANK.get(dispute.status, 0))


def reversed_gross(reversed_total: int, gross_total: int, collected: int) -> int:
    """The creators' gross taken back when `reversed_total` of an invoice that collected
    `collected` (tax included) is refunded or disputed: proportional, rounded half-up, never above
    the gross."""
    if reversed_total <= 0 or gross_total <= 0:
        return 0
    if collected <= 0:
        return min(reversed_total, gross_total)
    if reversed_total >= collected:
        return gross_total
    exact = Decimal(reversed_total) * gross_total / collected
    return min(gross_total, int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


async def record_reversal(
    session: AsyncSession, invoice_id: uuid.UUID, state: ReversalState, *, observed_at: int
) -> bool:
    """Keep the newest state of a refund or dispute of the invoice; True if this one is newer
    (by the event's time, then by how far along its life it is). Older or repeated states are no-ops."""
    statement = insert(InvoiceReversal).values(
        id=uuid.uuid4(),
        invoice_id=invoice_id,
        stripe_object_id=state.stripe_object_id,
        source=state.source,
        status=state.status,
        amount=state.amount,
        stripe_state_at=observed_at,
        state_rank=state.rank,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[InvoiceReversal.stripe_object_id],
        set_={
            "status": statement.excluded.status,
            "amount": statement.excluded.amount,
            "stripe_state_at": statement.excluded.stripe_state_at,
            "state_rank": statement.excluded.state_rank,
            "updated_at": clock.now(),
        },
        where=tuple_(InvoiceReversal.stripe_state_at, InvoiceReversal.state_rank)
        < tuple_(statement.excluded.stripe_state_at, statement.excluded.state_rank),
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


async def invoice_reversed_total(session: AsyncSession, invoice_id: uuid.UUID) -> int:
    """What the invoice's refunds and disputes take back now, in the invoice's minor units."""
    total = await session.execute(
        select(func.coalesce(func.sum(InvoiceReversal.amount), 0)).where(
            InvoiceReversal.invoice_id == invoice_id
        )
    )
    return int(total.scalar_one())


async def _booked_adjustments(
    session: AsyncSession, invoice_id: uuid.UUID
) -> dict[uuid.UUID, tuple[int, int, int]]:
    """Per plan, what the invoice's reversal lines take back so far (reinstatements subtracted)."""
    sign = case((Earning.kind == "reversal", 1), else_=-1)
    result = await session.execute(
        select(
            Earning.plan_id,
            func.sum(sign * Earning.gross_amount),
            func.sum(sign * Earning.commission_amount),
            func.sum(sign * Earning.net_amount),
        )
        .where(Earning.invoice_id == invoice_id, Earning.kind.in_(("reversal", "reinstatement")))
        .group_by(Earning.plan_id)
    )
    return {plan: (int(g), int(c), int(n)) for plan, g, c, n in result.all()}


def reversal_targets(
    charges: Sequence[tuple[int, int, int]], reversed_total: int, collected: int
) -> list[tuple[int, int, int]]:
    """Per charge line of an invoice, as (gross, commission, net) in plan order, the
    (gross, commission, net) that `reversed_total` of its refunds and disputes takes back in all,
    the invoice having collected `collected` (`amount_collected`)."""
    to_reverse = reversed_gross(reversed_total, sum(gross for gross, _, _ in charges), collected)
    shares = proportional_shares(to_reverse, [gross for gross, _, _ in charges])
    return [_target(charge, gross) for charge, gross in zip(charges, shares, strict=True)]


def _target(charge: tuple[int, int, int], gross: int) -> tuple[int, int, int]:
    booked_gross, booked_commission, _ = charge
    if gross >= booked_gross:  # a full reversal gives back exactly what was booked
        return charge
    commission, net = split_commission(gross, Decimal(booked_commission) / booked_gross)
    return gross, commission, net


async def reverse_invoice_earnings(
    session: AsyncSession, *, invoice_id: uuid.UUID, reversed_total: int, reference: str | None = None
) -> int:
    """Bring the invoice's reversal lines to `reversed_total` (cumulative: everything its refunds
    and disputes take back now); returns how many ledger lines this call appended.

    Idempotent: the lines booked so far are compared with the target and only the difference is
    appended, per plan (a reinstatement when the target went down). The invoice row is locked,
    so concurrent calls for one invoice apply one after the other.
    """
    invoice = (
        await session.execute(select(Invoice).where(Invoice.id == invoice_id).with_for_update())
    ).scalar_one_or_none()
    if invoice is None:
        return 0
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
    targets = reversal_targets(
        [(c.gross_amount, c.commission_amount, c.net_amount) for c in charges],
        reversed_total,
        invoice_collected(invoice),
    )
    booked = await _booked_adjustments(session, invoice_id)
    rows = list(_adjustments(charges, targets, booked, reference))
    if rows:
        await session.execute(insert(Earning).values(rows))
    return len(rows)


def _adjustments(
    charges: Iterable[Earning],
    targets: list[tuple[int, int, int]],
    booked: dict[uuid.UUID, tuple[int, int, int]],
    reference: str | None,
) -> Iterable[dict[str, Any]]:
    now = clock.now()
    for charge, target in zip(charges, targets, strict=True):
        done = booked.get(charge.plan_id, (0, 0, 0))
        delta = [t - d for t, d in zip(target, done, strict=True)]
        if delta[0] == 0:
            continue
        # Commission and net move with the gross (half-up rounding is monotonic), same sign.
        kind = "reversal" if delta[0] > 0 else "reinstatement"
        gross_delta, commission_delta, net_delta = (abs(x) for x in delta)
        yield {
            "id": uuid.uuid4(),
            "creator_id": charge.creator_id,
            "api_id": charge.api_id,
            "plan_id": charge.plan_id,
            "invoice_id": charge.invoice_id,
            "subscription_id": charge.subscription_id,
            "kind": kind,
            "status": "available",  # deducted from (or added to) the next payout at once
            "currency": charge.currency,
            "gross_amount": gross_delta,
            "commission_amount": commission_delta,
            "net_amount": net_delta,
            "reference": reference,
            "earned_at": now,
            "created_at": now,
        }


async def settle_invoice_reversals(session: AsyncSession, invoice: Invoice, *, reference: str | None) -> int:
    """Book what the invoice's recorded refunds and disputes take back now (see above)."""
    total = await invoice_reversed_total(session, invoice.id)
    return await reverse_invoice_earnings(
        session, invoice_id=invoice.id, reversed_total=total, reference=reference
    )
