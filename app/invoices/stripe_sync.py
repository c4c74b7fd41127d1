"""Mirror of a Stripe invoice: one function used by webhooks (and sync), dj-stripe style.

Idempotent and safe out of order: fields follow the newest snapshot seen (by `observed_at`),
and the status only moves forward (a paid invoice never becomes open again).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.invoices.lines import stored_line
from app.models import Consumer, Invoice, Subscription
from app.stripe.invoices import StripeInvoiceLine, balance_field

# How far along its life an invoice is; a snapshot never moves it to a lower rank.
STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value["id"]) if value.get("id") else None
    return str(value) if value else None


def invoice_subscription_id(obj: dict[str, Any]) -> str | None:
    """The Stripe subscription an invoice bills: top level before API 2025-03-31, `parent` since."""
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    return _id(obj.get("subscription")) or _id(details.get("subscription"))


def _line(line: dict[str, Any], currency: str) -> dict[str, Any]:
    """A line in the one shape the invoice API, the PDF and the earnings booking all read
    (`stored_line`), plus what the booking needs: the price, discounts, the subscription."""
    pricing = (line.get("pricing") or {}).get("price_details") or {}
    parent = (line.get("parent") or {}).get("subscription_item_details") or {}
    discounts = sum(int(d.get("amount", 0)) for d in line.get("discount_amounts") or [])
    return stored_line(StripeInvoiceLine.from_payload(line, currency)) | {
        "id": line.get("id"),
        "discount": discounts,
        "price_id": _id(line.get("price")) or _id(pricing.get("price")) or _id(line.get("plan")),
        "subscription": _id(line.get("subscription")) or _id(parent.get("subscription")),
    }


def _our_id(obj: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str((obj.get("metadata") or {}).get("invoice_id")))
    except ValueError:
        return None


def _tax(obj: dict[str, Any]) -> int:
    if obj.get("tax") is not None:
        return int(obj["tax"])
    return sum(int(t.get("amount", 0)) for t in obj.get("total_taxes") or [])


async def sync_invoice(session: AsyncSession, obj: dict[str, Any], *, observed_at: int) -> Invoice | None:
    """Upsert our mirror of the Stripe invoice `obj` (its JSON) seen at `observed_at` (unix s).

    Returns the locked row, or None when the invoice's customer is not one of our consumers.
    """
    customer_id = _id(obj.get("customer"))
    consumer_id = (
        await session.execute(select(Consumer.id).where(Consumer.stripe_customer_id == customer_id))
    ).scalar_one_or_none()
    if consumer_id is None:
        return None
    stripe_subscription = invoice_subscription_id(obj)
    subscription_id = None
    if stripe_subscription is not None:
        subscription_id = (
            await session.execute(
                select(Subscription.id).where(Subscription.stripe_subscription_id == stripe_subscription)
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
                stripe_invoice_id=obj["id"],
                consumer_id=consumer_id,
                status=obj.get("status") or "draft",
                currency=obj.get("currency") or "usd",
                lines=[],
            )
            .on_conflict_do_nothing()
        )
        invoice = (
            await session.execute(
                select(Invoice).where(Invoice.stripe_invoice_id == obj["id"]).with_for_update()
            )
        ).scalar_one_or_none()
        if invoice is not None:
            break
    else:
        raise RuntimeError(f"invoice {obj['id']} could not be stored")

    status = obj.get("status") or invoice.status
    if invoice.stripe_state_at is not None:
        rank, current = STATUS_RANK.get(status, 0), STATUS_RANK.get(invoice.status, 0)
        if rank < current or (rank == current and observed_at < invoice.stripe_state_at):
            return invoice
    invoice.status = status
    invoice.stripe_state_at = max(observed_at, invoice.stripe_state_at or 0)
    transitions = obj.get("status_transitions") or {}
    invoice.subscription_id = subscription_id or invoice.subscription_id
    invoice.number = obj.get("number") or invoice.number
    invoice.currency = obj.get("currency") or invoice.currency
    invoice.amount_due = int(obj.get("amount_due") or 0)
    invoice.amount_paid = int(obj.get("amount_paid") or 0)
    # Stripe's amounts as Stripe reports them: a credit invoice's subtotal, tax and total are negative.
    invoice.subtotal = int(obj.get("subtotal") or 0)
    invoice.total = int(obj.get("total") or 0)
    invoice.tax = _tax(obj)
    invoice.starting_balance = balance_field(obj, "starting_balance")
    invoice.ending_balance = balance_field(obj, "ending_balance")
    invoice.period_start = _ts(obj.get("period_start")) or invoice.period_start
    invoice.period_end = _ts(obj.get("period_end")) or invoice.period_end
    invoice.paid_at = _ts(transitions.get("paid_at")) or invoice.paid_at
    invoice.invoice_pdf = obj.get("invoice_pdf") or invoice.invoice_pdf
    invoice.hosted_invoice_url = obj.get("hosted_invoice_url") or invoice.hosted_invoice_url
    invoice.lines = [_line(line, invoice.currency) for line in (obj.get("lines") or {}).get("data") or []]
    if invoice.status == "paid" and invoice.paid_at is None:
        invoice.paid_at = datetime.fromtimestamp(observed_at, tz=UTC)
    return invoice
