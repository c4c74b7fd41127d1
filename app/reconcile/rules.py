"""What each comparison expects: pure rules, unit-tested on their own.

Earnings: what the ledger should hold for an invoice is the booking rule itself
(`app.earnings.booking.earning_lines`, on `app.earnings.collected`) and the reversal rule
(`app.payouts.reversals.reversal_targets`) applied to Stripe's invoice (its lines mapped to our
plans by price, its total, payment and balances), never a second copy of that arithmetic.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from app.earnings.booking import EarningLine, earning_lines, plan_sums
from app.earnings.collected import amount_collected
from app.money import minor_decimal
from app.payouts.reversals import reversal_targets
from app.reconcile.rows import Drift, InvoiceRow, PlanCatalog
from app.stripe.invoices import StripeInvoice


def compare_invoice(
    ours: InvoiceRow | None, stripe: StripeInvoice, *, customer_is_ours: bool
) -> Drift | None:
    """Our mirror against Stripe's invoice: status, currency, total and amount paid must agree.

    The drift is worth the larger of the total and amount-paid differences (the whole total for
    an invoice we never mirrored or mirrored in another currency)."""
    if ours is None:
        if not customer_is_ours:
            return None
        return Drift(
            "invoices", stripe.id, f"{stripe.status} at Stripe, missing here",
            stripe.currency, None, stripe.total, abs(stripe.total),
        )  # fmt: skip
    if ours.currency != stripe.currency:
        return Drift(
            "invoices", stripe.id, f"currency {ours.currency} here, {stripe.currency} at Stripe",
            stripe.currency, ours.total, stripe.total, abs(stripe.total),
        )  # fmt: skip
    differences = []
    if ours.status != stripe.status:
        differences.append(f"status {ours.status} here, {stripe.status} at Stripe")
    if ours.total != stripe.total:
        differences.append(f"total {ours.total} here, {stripe.total} at Stripe")
    if ours.amount_paid != stripe.amount_paid:
        differences.append(f"amount_paid {ours.amount_paid} here, {stripe.amount_paid} at Stripe")
    if not differences:
        return None
    cents = max(abs(ours.total - stripe.total), abs(ours.amount_paid - stripe.amount_paid))
    return Drift(
        "invoices", stripe.id, "; ".join(differences), stripe.currency, ours.total, stripe.total, cents
    )


def stripe_collected(stripe: StripeInvoice) -> int:
    """`amount_collected` of Stripe's invoice, from Stripe's own total, payment and balances."""
    return amount_collected(
        total=stripe.total,
        amount_paid=stripe.amount_paid,
        starting_balance=stripe.starting_balance,
        ending_balance=stripe.ending_balance,
    )


def expected_earning_lines(
    stripe: StripeInvoice, catalog: PlanCatalog, commission: Decimal
) -> list[EarningLine]:
    """The `charge` and `credit` lines booking would write for Stripe's invoice: the booking rule
    (`app.earnings.booking`) applied to Stripe's lines, total and balances; none unless paid."""
    if stripe.status != "paid":
        return []
    fallback = catalog.plan_of_subscription.get(stripe.subscription) if stripe.subscription else None
    by_plan = plan_sums(
        ((line.price_id, line.amount - line.discount) for line in stripe.lines),
        catalog.plan_of_price,
        fallback,
    )
    return earning_lines(
        by_plan, catalog.owners, total=stripe.total, collected=stripe_collected(stripe), rate=commission
    )


def expected_plan_nets(
    stripe: StripeInvoice, catalog: PlanCatalog, reversed_total: int, commission: Decimal
) -> dict[uuid.UUID, int]:
    """Per plan, the creator's net the ledger should hold for Stripe's invoice: its charge less its
    credit, less what `reversed_total` of refunds and disputes takes back (`app.payouts.reversals`)."""
    lines = expected_earning_lines(stripe, catalog, commission)
    nets: dict[uuid.UUID, int] = defaultdict(int)
    for line in lines:
        nets[line.plan_id] += line.net if line.kind == "charge" else -line.net
    charges = sorted((line for line in lines if line.kind == "charge"), key=lambda line: line.plan_id)
    taken = reversal_targets(
        [(c.gross, c.commission, c.net) for c in charges], reversed_total, stripe_collected(stripe)
    )
    for charge, (_, _, net) in zip(charges, taken, strict=True):
        nets[charge.plan_id] -= net
    return dict(nets)


def compare_earnings(
    stripe: StripeInvoice,
    catalog: PlanCatalog,
    ledger: Mapping[uuid.UUID, int],
    reversed_total: int,
    commission: Decimal,
) -> Drift | None:
    """The creators' ledger of an invoice (net per plan: charges and reinstatements less credits
    and reversals) against `expected_plan_nets`; the drift is worth the plans' differences."""
    expected = expected_plan_nets(stripe, catalog, reversed_total, commission)
    differences = [
        (plan, ledger.get(plan, 0), expected.get(plan, 0))
        for plan in sorted(set(expected) | set(ledger))
        if ledger.get(plan, 0) != expected.get(plan, 0)
    ]
    if not differences:
        return None
    ours, should = sum(ledger.values()), sum(expected.values())
    detail = (
        f"creators' ledger nets {ours}, Stripe's invoice (collected {stripe_collected(stripe)}) "
        f"should net {should}"
    )
    if reversed_total:
        detail += f" after {reversed_total} refunded or disputed"
    detail += ": " + "; ".join(f"plan {plan} {o} here, {e} expected" for plan, o, e in differences)
    cents = sum(abs(o - e) for _, o, e in differences)
    return Drift("earnings", stripe.id, detail, stripe.currency, ours, should, cents)


def minute_floor(moment: datetime) -> datetime:
    """Stripe's meter summaries take minute-aligned bounds."""
    return moment.replace(second=0, microsecond=0)


def usage_drift_cents(units: Decimal, price_per_call: Decimal | None, currency: str) -> int:
    """What `units` calls are worth at the plan's per-call price, in minor units (half up)."""
    if price_per_call is None:
        return 0
    worth = abs(units) * minor_decimal(price_per_call, currency)
    return int(worth.quantize(Decimal(1), rounding=ROUND_HALF_UP))
