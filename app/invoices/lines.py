"""The shape of `invoices.lines` (JSONB), written by the mirror and read by the API and the PDF.

Each stored line is a flat object: `description`, `plan_id`, `plan_name`, `period_start`,
`period_end` (ISO 8601), `quantity`, `unit_amount` (minor units as a decimal string: per-call
prices may be fractions of a cent), `amount` and `tax` (integer minor units) and `currency`.
`parse_line` also reads a raw Stripe line item, so rows mirrored either way render the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
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
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(int(value), tz=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, float):
        return None if value is None else Decimal(repr(value))
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_line(raw: dict[str, Any], currency: str) -> InvoiceLine:
    """A stored line (our flat shape, or a raw Stripe line item) as an InvoiceLine."""
    period = _object(raw.get("period"))
    metadata = _object(raw.get("metadata"))
    pricing = _object(raw.get("pricing"))
    unit = raw.get("unit_amount")
    if unit is None:
        unit = pricing.get("unit_amount_decimal") or raw.get("unit_amount_decimal")
    if "tax" in raw:
        tax = _int(raw.get("tax"))
    else:
        taxes = raw.get("taxes") or raw.get("tax_amounts") or []
        tax = sum(_int(t.get("amount")) for t in taxes if isinstance(t, dict))
    plan_id = raw.get("plan_id") or metadata.get("plan_id")
    return InvoiceLine(
        description=raw.get("description"),
        plan_id=str(plan_id) if plan_id else None,
        plan_name=raw.get("plan_name"),
        period_start=_when(raw.get("period_start") or period.get("start")),
        period_end=_when(raw.get("period_end") or period.get("end")),
        quantity=_int(raw.get("quantity")) or 1,
        unit_amount=_decimal(unit),
        amount=_int(raw.get("amount")),
        tax=tax,
        currency=str(raw.get("currency") or currency),
    )
