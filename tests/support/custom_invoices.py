"""Stripe's invoice and invoice item calls for custom invoices, answered at the HTTP boundary in
Stripe's documented shapes, and the request body the tests send."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl

import httpx
import respx

STRIPE_PDF = "https://pay.stripe.com/invoice/acct_1Test/test_YWNjdF8x/pdf?s=ap"
HOSTED = "https://invoice.stripe.com/i/acct_1Test/test_YWNjdF8x?s=ap"
BODY = {
    "currency": "usd",
    "description": "Enterprise onboarding",
    "lines": [
        {"description": "Integration workshop", "quantity": 2, "unit_amount": 75000},
        {"description": "Dedicated support, March", "quantity": 1, "unit_amount": 19999},
    ],
}


def flat_form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


class FakeStripeInvoices:
    """Answers Stripe's invoice and invoice item calls with Stripe's documented object shapes."""

    def __init__(self, tax_rate: int = 0) -> None:
        self.invoice_id = f"in_{uuid.uuid4().hex[:24]}"
        self.items: list[dict[str, Any]] = []
        self.tax_rate = tax_rate
        self.created: dict[str, str] = {}

    def invoice(self, status: str, **extra: Any) -> dict[str, Any]:
        lines = [
            {
                "id": f"il_{index}",
                "object": "line_item",
                "amount": item["amount"],
                "currency": "usd",
                "description": item["description"],
                "metadata": item["metadata"],
                "period": {"start": 1772323200, "end": 1772323200},
                "pricing": {"type": "price_details", "unit_amount_decimal": item["unit_amount_decimal"]},
                "quantity": item["quantity"],
                "taxes": [{"amount": item["amount"] * self.tax_rate // 100, "tax_behavior": "exclusive"}],
            }
            for index, item in enumerate(self.items)
        ]
        subtotal = sum(line["amount"] for line in lines)
        tax = sum(line["taxes"][0]["amount"] for line in lines)
        return {
            "id": self.invoice_id,
            "object": "invoice",
            "automatic_tax": {"enabled": self.created.get("automatic_tax[enabled]") == "true"},
            "collection_method": "send_invoice",
            "created": 1772323200,
            "currency": "usd",
            "customer": self.created.get("customer"),
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "lines": {"object": "list", "data": lines, "has_more": False},
            "metadata": {k[9:-1]: v for k, v in self.created.items() if k.startswith("metadata[")},
            "number": None,
            "period_start": 1772323200,
            "period_end": 1772323200,
            "status": status,
            "status_transitions": {"finalized_at": None, "paid_at": None},
            "subtotal": subtotal,
            "total": subtotal + tax,
            "total_taxes": [{"amount": tax}] if tax else [],
            "amount_due": subtotal + tax,
            "amount_paid": 0,
            **extra,
        }

    def install(self, mock: respx.MockRouter) -> dict[str, respx.Route]:
        def create(request: httpx.Request) -> httpx.Response:
            self.created = flat_form_of(request)
            self.items = []
            return httpx.Response(200, json=self.invoice("draft"))

        def add_item(request: httpx.Request) -> httpx.Response:
            form = flat_form_of(request)
            item = {
                "id": f"ii_{len(self.items)}",
                "object": "invoiceitem",
                "amount": int(form["quantity"]) * int(form["unit_amount_decimal"]),
                "currency": form["currency"],
                "description": form["description"],
                "invoice": form["invoice"],
                "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
                "quantity": int(form["quantity"]),
                "unit_amount_decimal": form["unit_amount_decimal"],
            }
            self.items.append(item)
            return httpx.Response(200, json=item)

        finalized = {
            "number": "MKT-0001",
            "status_transitions": {"finalized_at": 1772323300, "paid_at": None},
        }
        sent = {**finalized, "invoice_pdf": STRIPE_PDF, "hosted_invoice_url": HOSTED}
        return {
            "create": mock.post("/v1/invoices").mock(side_effect=create),
            "item": mock.post("/v1/invoiceitems").mock(side_effect=add_item),
            "finalize": mock.post(f"/v1/invoices/{self.invoice_id}/finalize").mock(
                side_effect=lambda _: httpx.Response(200, json=self.invoice("open", **finalized))
            ),
            "send": mock.post(f"/v1/invoices/{self.invoice_id}/send").mock(
                side_effect=lambda _: httpx.Response(200, json=self.invoice("open", **sent))
            ),
        }


Routes = dict[str, respx.Route]
# The `stripe_invoices` fixture: the fake and its routes by name.
StripeInvoices = tuple[FakeStripeInvoices, Routes]
