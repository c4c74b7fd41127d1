"""Stripe invoices and invoice items: one-off (custom) invoices and reading invoices back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from app.stripe.base import StripeBase, decimal_param
from app.stripe.shapes import metadata_of, stripe_id, timestamp


async def _lines_after(calls: StripeBase, invoice_id: str, after: str | None) -> list[dict[str, Any]]:
    """The invoice's lines after the line `after` (all of them without it), every page."""
    data: list[dict[str, Any]] = []
    service = calls.client.v1.invoices.line_items
    while True:
        params: dict[str, Any] = {"limit": 100}
        cursor = data[-1]["id"] if data else after
        if cursor:
            params["starting_after"] = cursor
        page = await calls._call(
            "invoices.line_items.list",
            partial(service.list_async, invoice_id, params=params),  # type: ignore[arg-type]
        )
        data.extend(line.to_dict() for line in page.data)
        if not page.has_more or not page.data:
            return data


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
    # The Price it bills (None for an ad-hoc item) and what line discounts took off it.
    price_id: str | None = None
    discount: int = 0
    id: str | None = None
    # The Stripe subscription the line bills, and whether it is a proration of a plan change.
    subscription: str | None = None
    proration: bool = False

    @classmethod
    def from_payload(cls, line: dict[str, Any], currency: str) -> StripeInvoiceLine:
        """A line of any recent API version: since 2025-03-31 the price is under
        `pricing.price_details`, the subscription and proration under `parent` (its
        `subscription_item_details` for a subscription item's line, its `invoice_item_details` for
        an invoice item's, such as a plan change's prorations); before, at the top (`price`, or the
        legacy `plan`), `subscription`, `proration`."""
        pricing = line.get("pricing") or {}
        parents = line.get("parent") or {}
        parent = parents.get("subscription_item_details") or parents.get("invoice_item_details") or {}
        price_id = (
            stripe_id(line.get("price"))
            or stripe_id((pricing.get("price_details") or {}).get("price"))
            or stripe_id(line.get("plan"))
        )
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
            period_start=timestamp(period.get("start")),
            period_end=timestamp(period.get("end")),
            metadata=metadata_of(line),
            price_id=price_id,
            discount=sum(int(d.get("amount") or 0) for d in line.get("discount_amounts") or []),
            id=stripe_id(line.get("id")),
            subscription=stripe_id(line.get("subscription")) or stripe_id(parent.get("subscription")),
            proration=bool(parent.get("proration", line.get("proration", False))),
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
    # As Stripe snapshots them on the invoice: the bill-to party, the memo and the due date.
    customer_name: str | None = None
    customer_address: dict[str, Any] | None = None
    description: str | None = None
    due_date: datetime | None = None
    # When Stripe last moved it along its life (finalised, paid, voided, ...), by Stripe's clock.
    last_transition_at: int | None = None
    # True when Stripe embedded only the first page of its lines (the gateway fetches the rest).
    more_lines: bool = False
    # An API answer's time by Stripe's clock (`answered_at`); None in an event or a replay.
    answered_at: int | None = None

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeInvoice:
        """From Stripe's JSON (an API answer or an event's `data.object`), any recent API version:
        the tax is `total_taxes` since 2025-03-31 (`tax`, or `total_tax_amounts`, before), the
        subscription `parent.subscription_details.subscription` (top-level `subscription` before)."""
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
        subscription = stripe_id(obj.get("subscription")) or stripe_id(
            (parent.get("subscription_details") or {}).get("subscription")
        )
        transitions = obj.get("status_transitions") or {}
        stamps = [int(value) for value in transitions.values() if isinstance(value, int) and value]
        lines = obj.get("lines") or {}
        address = obj.get("customer_address")
        return cls(
            id=obj["id"],
            customer=stripe_id(obj.get("customer")),
            subscription=subscription,
            number=obj.get("number"),
            status=str(obj.get("status") or "draft"),
            currency=currency,
            amount_due=int(obj.get("amount_due") or 0),
            amount_paid=int(obj.get("amount_paid") or 0),
            subtotal=subtotal,
            tax=tax,
            total=total,
            created=timestamp(obj.get("created") or obj.get("date")),
            period_start=timestamp(obj.get("period_start")),
            period_end=timestamp(obj.get("period_end")),
            paid_at=timestamp(transitions.get("paid_at")),
            invoice_pdf=obj.get("invoice_pdf"),
            hosted_invoice_url=obj.get("hosted_invoice_url"),
            metadata=metadata_of(obj),
            lines=tuple(StripeInvoiceLine.from_payload(line, currency) for line in lines.get("data") or []),
            starting_balance=balance_field(obj, "starting_balance"),
            ending_balance=balance_field(obj, "ending_balance"),
            customer_name=obj.get("customer_name") or None,
            customer_address=dict(address) if isinstance(address, dict) else None,
            description=obj.get("description") or None,
            due_date=timestamp(obj.get("due_date")),
            last_transition_at=max(stamps, default=None),
            more_lines=bool(lines.get("has_more")),
        )

    @property
    def as_of(self) -> int | None:
        """The newest moment, by Stripe's clock, this snapshot shows: its last status transition,
        else its creation. An API answer is at least this new."""
        created = int(self.created.timestamp()) if self.created else None
        stamps = (created, self.last_transition_at, self.answered_at)
        return max((t for t in stamps if t is not None), default=None)


def balance_field(obj: dict[str, Any], name: str) -> int | None:
    """An invoice's `starting_balance` / `ending_balance`: integer minor units, or None when absent."""
    value = obj.get(name)
    return None if value is None else int(value)


async def all_lines(calls: StripeBase, invoice: StripeInvoice) -> StripeInvoice:
    """The invoice with every line: Stripe embeds only the first page (10) of `lines`, so the
    rest is listed after the last embedded one."""
    if not invoice.more_lines:
        return invoice
    after = invoice.lines[-1].id if invoice.lines else None
    rest = await _lines_after(calls, invoice.id, after)
    parsed = tuple(StripeInvoiceLine.from_payload(line, invoice.currency) for line in rest)
    return replace(invoice, lines=invoice.lines + parsed, more_lines=False)


async def invoice_with_all_lines(calls: StripeBase, invoice: dict[str, Any]) -> StripeInvoice:
    """Parse the invoice JSON, with the lines Stripe did not embed fetched."""
    return await all_lines(calls, StripeInvoice.from_payload(invoice))


class InvoiceCalls(StripeBase):
    async def with_all_lines(self, invoice: StripeInvoice) -> StripeInvoice:
        """The invoice with every line (see `all_lines`)."""
        return await all_lines(self, invoice)

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
        return await invoice_with_all_lines(self, invoice.to_dict())

    async def add_invoice_item(
        self,
        *,
        customer: str,
        invoice: str | None,
        currency: str,
        description: str,
        quantity: int,
        unit_amount_decimal: Decimal,
        metadata: dict[str, str],
        idempotency_key: str,
        subscription: str | None = None,
    ) -> str:
        """An invoice item on the draft `invoice`; or, with `invoice` None, a pending item that
        Stripe puts on the next invoice of `subscription` (of the customer, without one)."""
        params: dict[str, Any] = {
            "customer": customer,
            "currency": currency,
            "description": description,
            "quantity": quantity,
            "unit_amount_decimal": decimal_param(unit_amount_decimal),
            "metadata": metadata,
        }
        if invoice is not None:
            params["invoice"] = invoice
        if subscription is not None:
            params["subscription"] = subscription
        item = await self._call(
            "invoiceitems.create",
            lambda: self._client.v1.invoice_items.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return item.id

    async def invoice_item_quantities(
        self, *, customer: str, metadata: dict[str, str], created_since: datetime
    ) -> int:
        """The summed quantity of the customer's invoice items made since `created_since`, pending
        or on an invoice that is not void, whose metadata holds all of `metadata`: what Stripe has
        been asked to bill and may still collect, as Stripe keeps it (a voided invoice's items
        never will be)."""
        total = 0
        starting_after: str | None = None
        while True:
            params: dict[str, Any] = {
                "customer": customer,
                "limit": 100,
                "created": {"gte": int(created_since.timestamp())},
                "expand": ["data.invoice"],
            }
            if starting_after is not None:
                params["starting_after"] = starting_after
            page = await self._call(
                "invoiceitems.list",
                lambda params=params: self._client.v1.invoice_items.list_async(params=params),  # type: ignore[misc]
            )
            for item in page.data:
                data = item.to_dict()
                held = data.get("metadata") or {}
                invoice = data.get("invoice")
                if isinstance(invoice, dict) and invoice.get("status") == "void":
                    continue
                if all(held.get(key) == value for key, value in metadata.items()):
                    total += int(data.get("quantity") or 0)
            if not page.has_more or not page.data:
                return total
            starting_after = page.data[-1].id

    async def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> StripeInvoice:
        invoice = await self._call(
            "invoices.finalize",
            lambda: self._client.v1.invoices.finalize_invoice_async(
                invoice_id, params={"auto_advance": True}, options={"idempotency_key": idempotency_key}
            ),
        )
        return await invoice_with_all_lines(self, invoice.to_dict())

    async def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> StripeInvoice:
        invoice = await self._call(
            "invoices.send",
            lambda: self._client.v1.invoices.send_invoice_async(
                invoice_id, options={"idempotency_key": idempotency_key}
            ),
        )
        return await invoice_with_all_lines(self, invoice.to_dict())
