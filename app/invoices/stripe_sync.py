"""Mirror of a Stripe invoice: the one function (dj-stripe style) by which a Stripe invoice
becomes our row, used by the webhooks, `billing sync` and custom invoices alike.

Idempotent and safe out of order: fields follow the newest snapshot seen (by `observed_at`, a
time on Stripe's clock), and the status only moves forward (a paid invoice never becomes open
again). What a snapshot says (its tax, its subscription, its lines) is read by `StripeInvoice`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.invoices.lines import stored_line
from app.invoices.numbering import number_if_final
from app.invoices.repository import link_earnings
from app.models import Consumer, Invoice, Subscription
from app.stripe.invoices import StripeInvoice, StripeInvoiceLine

# How far along its life an invoice is; a snapshot never moves it to a lower rank.
STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


def _line(line: StripeInvoiceLine) -> dict[str, Any]:
    """A line in the one shape the invoice API, the PDF and the earnings booking all read
    (`stored_line`), plus what the booking needs: the price, discounts, the subscription."""
    return stored_line(line) | {
        "id": line.id,
        "discount": line.discount,
        "price_id": line.price_id,
        "subscription": line.subscription,
    }


def _our_id(invoice: StripeInvoice) -> uuid.UUID | None:
    try:
        return uuid.UUID(invoice.metadata.get("invoice_id", ""))
    except ValueError:
        return None


def is_stale(invoice: Invoice, status: str, observed_at: int) -> bool:
    """True when a snapshot in `status` seen at `observed_at` is older than the row: a lower
    status, or the same one seen earlier (by Stripe's clock)."""
    if invoice.stripe_state_at is None:
        return False
    rank, current = STATUS_RANK.get(status, 0), STATUS_RANK.get(invoice.status, 0)
    return rank < current or (rank == current and observed_at < invoice.stripe_state_at)


async def sync_invoice(
    session: AsyncSession, obj: StripeInvoice, *, observed_at: int, issuer: str
) -> Invoice | None:
    """Upsert our mirror of the Stripe invoice `obj` seen at `observed_at` (unix s, Stripe's clock).

    A finalised invoice Stripe gave no number gets the next of `issuer`'s own sequence (the
    issuer is required: an invoice first mirrored by any path is numbered alike). Returns the
    locked row, or None when the invoice's customer is not one of ours.
    """
    consumer_id = (
        await session.execute(select(Consumer.id).where(Consumer.stripe_customer_id == obj.customer))
    ).scalar_one_or_none()
    if consumer_id is None:
        return None
    subscription_id = None
    if obj.subscription is not None:
        subscription_id = (
            await session.execute(
                select(Subscription.id).where(Subscription.stripe_subscription_id == obj.subscription)
            )
        ).scalar_one_or_none()

    # An invoice we created ourselves (custom invoices) names our row id in its metadata: the row
    # gets that id whether the API call or this event stores it first.
    for row_id in (_our_id(obj), uuid.uuid4()):
        if row_id is None:
            continue
        await session.execute(
            insert(Invoice)
            .values(
                id=row_id,
                stripe_invoice_id=obj.id,
                consumer_id=consumer_id,
                status=obj.status,
                currency=obj.currency,
                lines=[],
                created_at=obj.created or clock.now(),
            )
            .on_conflict_do_nothing()
        )
        invoice = (
            await session.execute(
                select(Invoice).where(Invoice.stripe_invoice_id == obj.id).with_for_update()
            )
        ).scalar_one_or_none()
        if invoice is not None:
            break
    else:
        raise RuntimeError(f"invoice {obj.id} could not be stored")

    if subscription_id is not None and invoice.subscription_id is None:
        # Mirrored before our row followed its Stripe subscription: the lines booked then, too.
        invoice.subscription_id = subscription_id
        await link_earnings(session, subscription_id, invoice_id=invoice.id)
    if is_stale(invoice, obj.status, observed_at):
        return invoice
    invoice.status = obj.status
    invoice.stripe_state_at = max(observed_at, invoice.stripe_state_at or 0)
    invoice.subscription_id = subscription_id or invoice.subscription_id
    invoice.number = obj.number or invoice.number
    invoice.currency = obj.currency
    invoice.amount_due = obj.amount_due
    invoice.amount_paid = obj.amount_paid
    # Stripe's amounts as Stripe reports them: a credit invoice's subtotal, tax and total are negative.
    invoice.subtotal = obj.subtotal
    invoice.total = obj.total
    invoice.tax = obj.tax
    invoice.starting_balance = obj.starting_balance
    invoice.ending_balance = obj.ending_balance
    invoice.period_start = obj.period_start or invoice.period_start
    invoice.period_end = obj.period_end or invoice.period_end
    invoice.paid_at = obj.paid_at or invoice.paid_at
    invoice.invoice_pdf = obj.invoice_pdf or invoice.invoice_pdf
    invoice.hosted_invoice_url = obj.hosted_invoice_url or invoice.hosted_invoice_url
    invoice.lines = [_line(line) for line in obj.lines]
    if invoice.status == "paid" and invoice.paid_at is None:
        invoice.paid_at = datetime.fromtimestamp(observed_at, tz=UTC)
    invoice.customer_name = obj.customer_name or invoice.customer_name
    invoice.customer_address = obj.customer_address or invoice.customer_address
    invoice.description = obj.description or invoice.description
    invoice.due_date = obj.due_date or invoice.due_date
    await number_if_final(session, invoice, issuer)
    return invoice
