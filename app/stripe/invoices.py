"""Stripe invoices and invoice items: one-off (custom) invoices and reading invoices back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from app.stripe.base import StripeBase, decimal_param


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


async def with_all_lines(calls: StripeBase, invoice: dict[str, Any]) -> dict[str, Any]:
    """The invoice JSON with every line: Stripe embeds only the first page (10) of `lines`."""
    lines = invoice.get("lines") or {}
    if not lines.get("has_more") or not invoice.get("id"):
        return invoice
    data = list(lines.get("data") or [])
    service = calls.client.v1.invoices.line_items
    while True:
        params: dict[str, Any] = {"limit": 100}
        if data:
            params["starting_after"] = data[-1]["id"]
        page = await calls._call(
            "invoices.line_items.list",
            partial(service.list_async, invoice["id"], params=params),  # type: ignore[arg-type]
        )
        data.extend(line.to_dict() for line in page.data)
        if not page.has_more or not page.data:
            break
    return {**invoice, "lines": {**lines, "data": data, "has_more": False}}


@dataclass(frozen=True, slots=True)
class StripeInvoiceLine:
    description: str | None
    quantity: int
    unit_amount_decimal: Decimal | None  # minor units, may be fractional (per-call prices)
    amount: int
    tax: int
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    metadata: dict[str, str]

    @classmethod
    def from_payload(cls, line: dict[str, Any], currency: str) -> StripeInvoiceLine:
        pricing = line.get("pricing") or {}
        unit = pricing.get("unit_amount_decimal") or line.get("unit_amount_decimal")
        if unit is None:
            price = line.get("price") or line.get("plan") or {}
            unit = price.get("unit_amount_decimal") if isinstance(price, dict) else None
        # API versions since 2025-03-31 list `taxes`; older ones `tax_amounts`.
        taxes = line.get("taxes") or line.get("tax_amounts") or []
        period = line.get("period") or {}
        return cls(
            description=line.get("description"),
            quantity=int(line.get("quantity") or 1),
            unit_amount_decimal=Decimal(str(unit)) if unit is not None else None,
            amount=int(line.get("amount") or 0),
            tax=sum(int(t.get("amount") or 0) for t in taxes),
            currency=str(line.get("currency") or currency),
            period_start=_ts(period.get("start")),
            period_end=_ts(period.get("end")),
            metadata=dict(line.get("metadata") or {}),
        )


@dataclass(frozen=True, slots=True)
class StripeInvoice:
    """The parts of a Stripe Invoice we mirror into `invoices`."""

    id: str
    customer: str | None
    subscription: str | None
    number: str | None
    status: str
    currency: str
    amount_due: int
    amount_paid: int
    subtotal: int
    tax: int
    total: int
    created: datetime | None
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime | None
    invoice_pdf: str | None
    hosted_invoice_url: str | None
    metadata: dict[str, str]
    lines: tuple[StripeInvoiceLine, ...]
    # The customer's invoice balance before and after it (negative: a credit); null until finalised.
    starting_balance: int | None = None
    ending_balance: int | None = None

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeInvoice:
        """From Stripe's JSON (an API answer or an event's `data.object`), any recent API version."""
        currency = str(obj.get("currency") or "usd")
        subtotal = int(obj.get("subtotal") or 0)
        total = int(obj.get("total") or 0)
        if obj.get("total_taxes") is not None:
            tax = sum(int(t.get("amount") or 0) for t in obj["total_taxes"])
        elif obj.get("tax") is not None:
            tax = int(obj["tax"])
        else:
            tax = sum(int(t.get("amount") or 0) for t in obj.get("total_tax_amounts") or [])
        parent = obj.get("parent") or {}
        subscription = _id(obj.get("subscription")) or _id(
            (parent.get("subscription_details") or {}).get("subscription")
        )
        transitions = obj.get("status_transitions") or {}
        lines = (obj.get("lines") or {}).get("data") or []
        return cls(
            id=obj["id"],
            customer=_id(obj.get("customer")),
            subscription=subscription,
            number=obj.get("number"),
            status=str(obj.get("status") or "draft"),
            currency=currency,
            amount_due=int(obj.get("amount_due") or 0),
            amount_paid=int(obj.get("amount_paid") or 0),
            subtotal=subtotal,
            tax=tax,
            total=total,
            created=_ts(obj.get("created") or obj.get("date")),
            period_start=_ts(obj.get("period_start")),
            period_end=_ts(obj.get("period_end")),
            paid_at=_ts(transitions.get("paid_at")),
            invoice_pdf=obj.get("invoice_pdf"),
            hosted_invoice_url=obj.get("hosted_invoice_url"),
            metadata=dict(obj.get("metadata") or {}),
            lines=tuple(StripeInvoiceLine.from_payload(line, currency) for line in lines),
            starting_balance=balance_field(obj, "starting_balance"),
            ending_balance=balance_field(obj, "ending_balance"),
        )


def balance_field(obj: dict[str, Any], name: str) -> int | None:
    """An invoice's `starting_balance` / `ending_balance`: integer minor units, or None when absent."""
    value = obj.get(name)
    return None if value is None else int(value)


class InvoiceCalls(StripeBase):
    async def create_invoice(
        self,
        *,
        customer: str,
        currency: str,
        description: str | None,
        days_until_due: int,
        automatic_tax: bool,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> StripeInvoice:
        """A draft invoice sent by email (no pending items swept in); items are added to it by id."""
        params: dict[str, Any] = {
            "customer": customer,
            "currency": currency,
            "collection_method": "send_invoice",
            "days_until_due": days_until_due,
            "pending_invoice_items_behavior": "exclude",
            "auto_advance": False,
            "automatic_tax": {"enabled": automatic_tax},
            "metadata": metadata,
        }
        if description:
            params["description"] = description
        invoice = await self._call(
            "invoices.create",
            lambda: self._client.v1.invoices.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripeInvoice.from_payload(await with_all_lines(self, invoice.to_dict()))

    async def add_invoice_item(
        self,
        *,
        customer: str,
        invoice: str,
        currency: str,
        description: str,
        quantity: int,
        unit_amount_decimal: Decimal,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> str:
        item = await self._call(
            "invoiceitems.create",
            lambda: self._client.v1.invoice_items.create_async(
                params={  # type: ignore[arg-type]
                    "customer": customer,
                    "invoice": invoice,
                    "currency": currency,
                    "description": description,
                    "quantity": quantity,
                    "unit_amount_decimal": decimal_param(unit_amount_decimal),
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return item.id

    async def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> StripeInvoice:
        invoice = await self._call(
            "invoices.finalize",
            lambda: self._client.v1.invoices.finalize_invoice_async(
                invoice_id, params={"auto_advance": True}, options={"idempotency_key": idempotency_key}
            ),
        )
        return StripeInvoice.from_payload(await with_all_lines(self, invoice.to_dict()))

    async def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> StripeInvoice:
        invoice = await self._call(
            "invoices.send",
            lambda: self._client.v1.invoices.send_invoice_async(
                invoice_id, options={"idempotency_key": idempotency_key}
            ),
        )
        return StripeInvoice.from_payload(await with_all_lines(self, invoice.to_dict()))
