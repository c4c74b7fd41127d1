"""Refund and dispute events: they take back (or give back) what a paid invoice earned its creators.

Stripe's model for the pinned API version: `refund.created` / `refund.updated` / `refund.failed`
carry one Refund each, for every refund (since 2024-10-28); `charge.refunded` would repeat the
same refunds as a cumulative charge total, so it is not handled. Disputes arrive as
`charge.dispute.created` / `updated` / `closed`. A chargeback is reversed when it opens (Stripe
withdraws the funds then) and reinstated if it is won; inquiries (`warning_*`) reverse nothing.

Each refund or dispute is recorded at its newest state and the invoice's reversal lines are
brought to what they all take back now, so repeats and any order end in the same ledger.
Neither object names its invoice: the PaymentIntent does, through an InvoicePayment (re-fetched).
"""

from __future__ import annotations

from sqlalchemy import select

from app.earnings.booking import book_invoice_earnings
from app.invoices.stripe_sync import sync_invoice
from app.models import Invoice
from app.payouts.reversals import ReversalState, record_reversal, settle_invoice_reversals
from app.stripe.shapes import StripeReversal
from app.webhooks.context import EventContext


async def _stripe_invoice_id(ctx: EventContext, obj: StripeReversal) -> str | None:
    """The Stripe invoice the refunded or disputed payment paid, or None if it paid no invoice."""
    if obj.invoice:  # charges of API versions before 2025-03-31
        return obj.invoice
    payment_intent = obj.payment_intent
    charge = obj.charge
    if payment_intent is None and charge is not None:
        payment_intent = await ctx.stripe.payment_intent_of_charge(charge)
    if payment_intent is None:
        return None
    return await ctx.stripe.invoice_of_payment_intent(payment_intent)


async def _paid_invoice(ctx: EventContext, stripe_invoice_id: str) -> Invoice | None:
    """Our locked mirror of the invoice, refreshed from Stripe (and its earnings booked) when the
    refund or dispute arrives before we saw it paid; None when it is not one of our consumers'."""
    invoice = (
        await ctx.session.execute(
            select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id).with_for_update()
        )
    ).scalar_one_or_none()
    if invoice is not None and invoice.status == "paid":
        return invoice
    fetched = await ctx.stripe.retrieve_invoice(stripe_invoice_id)
    invoice = await sync_invoice(
        ctx.session,
        fetched,
        observed_at=max(fetched.as_of or 0, ctx.created),
        issuer=ctx.settings.invoice_issuer_name,
    )
    if invoice is not None:
        await book_invoice_earnings(ctx.session, invoice, ctx.settings.platform_commission)
    return invoice


async def _apply(ctx: EventContext, obj: StripeReversal, state: ReversalState) -> str:
    stripe_invoice_id = await _stripe_invoice_id(ctx, obj)
    if stripe_invoice_id is None:
        return "ignored"
    invoice = await _paid_invoice(ctx, stripe_invoice_id)
    if invoice is None:
        return "ignored"
    await record_reversal(ctx.session, invoice.id, state, observed_at=ctx.created)
    await settle_invoice_reversals(ctx.session, invoice, reference=state.stripe_object_id)
    return "processed"


async def refund_changed(ctx: EventContext, obj: StripeReversal) -> str:
    """refund.created / updated / failed: a refund takes back its amount unless it failed or was canceled."""
    return await _apply(ctx, obj, ReversalState.of_refund(obj))


async def dispute_changed(ctx: EventContext, obj: StripeReversal) -> str:
    """charge.dispute.created / updated / closed: reversed while open or lost, reinstated when won."""
    return await _apply(ctx, obj, ReversalState.of_dispute(obj))
