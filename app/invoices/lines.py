"""The shape of `invoices.lines` (JSONB), written by the mirror and read by the API and the PDF.

Each stored line is a flat object: `description`, `plan_id`, `plan_name`, `period_start`,
`period_end` (ISO 8601), `quantity`, `unit_amount` (minor units as a decimal string: per-call
prices may be fractions of a cent), `amount` and `tax` (integer minor units) and `currency`.
Every writer stores this shape (the mirror through `stored_line`, the demo history alike); no
row of the current schema holds any other, so `parse_line` reads this one only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from app.stripe.invoices import StripeInvoiceLine


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    description: str | None
    plan_id: str | None
    plan_name: str | None
    period_start: datetime | None
    period_end: datetime | None
    quantity: int
    unit_amount: Decimal | None
    amount: int
    tax: int
    currency: str


def stored_line(line: StripeInvoiceLine, *, plan_name: str | None = None) -> dict[str, Any]:
    """A Stripe line as we store it; the plan comes from the metadata our prices and items carry."""
    return {
        "description": line.description,
        "plan_id": line.metadata.get("plan_id"),
        "plan_name": plan_name,
        "period_start": line.period_start.isoformat() if line.period_start else None,
        "period_end": line.period_end.isoformat() if line.period_end else None,
        "quantity": line.quantity,
        "unit_amount": format(line.unit_amount_decimal, "f")
        if line.unit_amount_decimal is not None
        else None,
        "amount": line.amount,
        "tax": line.tax,
        "currency": line.currency,
    }


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def parse_line(raw: dict[str, Any], currency: str) -> InvoiceLine:
    """A stored line (the shape `stored_line` writes) as an InvoiceLine."""
    unit = raw.get("unit_amount")
    plan_id = raw.get("plan_id")
    return InvoiceLine(
        description=raw.get("description"),
        plan_id=str(plan_id) if plan_id else None,
        plan_name=raw.get("plan_name"),
        period_start=_when(raw.get("period_start")),
        period_end=_when(raw.get("period_end")),
        quantity=int(raw.get("quantity") or 1),
        unit_amount=Decimal(str(unit)) if unit is not None else None,
        amount=int(raw.get("amount") or 0),
        tax=int(raw.get("tax") or 0),
        currency=str(raw.get("currency") or currency),
    )
