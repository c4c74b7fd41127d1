"""What each comparison expects: pure rules, unit-tested on their own.

Earnings follow the money: a paid invoice earns its creators what Stripe collected for it
(`amount_paid`, the tax share taken out) less the platform commission, and a refund or dispute
takes back its proportional share of that; an unpaid or negative-total invoice earns nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from app.money import minor_decimal, split_commission
from app.payouts.reversals import reversed_gross
from app.stripe.invoices import StripeInvoice

# The usage worker stamps a window's meter event with the window's last second.
METER_STAMP_OFFSET = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between our store and Stripe."""

    check: str
    subject: str
    detail: str
    currency: str | None = None
    ours: int | None = None
    stripe: int | None = None
    cents: int = 0


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    """What the invoice check reads of our mirror of one Stripe invoice."""

    id: uuid.UUID
    status: str
    currency: str
    total: int
    amount_paid: int
    subscription_id: uuid.UUID | None


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


def creators_collected(stripe: StripeInvoice) -> int:
    """What Stripe collected on a paid invoice for its creators: `amount_paid` less its tax
    share (tax is never the creators'); 0 for an unpaid or non-positive invoice."""
    if stripe.status != "paid" or stripe.amount_paid <= 0 or stripe.total <= 0:
        return 0
    pre_tax = stripe.total - stripe.tax
    if pre_tax <= 0:
        return 0
    if stripe.tax <= 0:
        return min(stripe.amount_paid, pre_tax)
    share = (Decimal(stripe.amount_paid) * pre_tax / stripe.total).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    return min(int(share), pre_tax)


def expected_creator_net(stripe: StripeInvoice, reversed_total: int, commission: Decimal) -> int:
    """Creators' net on an invoice: collected x (1 - commission), less what refunds and disputes
    (`reversed_total`, in the invoice's minor units) take back in proportion."""
    collected = creators_collected(stripe)
    if collected <= 0:
        return 0
    taken_back = reversed_gross(reversed_total, collected, stripe.amount_paid)
    return split_commission(collected, commission)[1] - split_commission(taken_back, commission)[1]


def compare_earnings(
    stripe: StripeInvoice, ledger_net: int, reversed_total: int, commission: Decimal
) -> Drift | None:
    expected = expected_creator_net(stripe, reversed_total, commission)
    if expected == ledger_net:
        return None
    detail = (
        f"creators' ledger nets {ledger_net}, collected {creators_collected(stripe)} should net {expected}"
    )
    if reversed_total:
        detail += f" after {reversed_total} refunded or disputed"
    return Drift(
        "earnings", stripe.id, detail, stripe.currency, ledger_net, expected, abs(expected - ledger_net)
    )


def minute_floor(moment: datetime) -> datetime:
    """Stripe's meter summaries take minute-aligned bounds."""
    return moment.replace(second=0, microsecond=0)


def usage_drift_cents(units: Decimal, price_per_call: Decimal | None, currency: str) -> int:
    """What `units` calls are worth at the plan's per-call price, in minor units (half up)."""
    if price_per_call is None:
        return 0
    worth = abs(units) * minor_decimal(price_per_call, currency)
    return int(worth.quantize(Decimal(1), rounding=ROUND_HALF_UP))
