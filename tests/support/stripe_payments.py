"""Stripe's side of refunds and disputes, answered by respx in Stripe's documented shapes: the
InvoicePayment linking a PaymentIntent to its invoice, charges, invoices (the emulator has no
InvoicePayments)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import httpx
import respx

from app.config import Settings
from tests.support.billing_data import World, invoice_obj

T0 = 1_780_000_000
PERIOD = (T0, T0 + 30 * 86400)


class FakePayments:
    """Stripe's answers for a world's invoices: each paid by `pi_<invoice>` through charge `ch_<invoice>`."""

    def __init__(self) -> None:
        self.world: World | None = None
        self.invoices: dict[str, dict[str, Any]] = {}
        # The `Date` (unix s, Stripe's clock) its invoice answers carry; None sends none.
        self.answered_at: int | None = None

    def paid(self, invoice_id: str, **fields: Any) -> dict[str, Any]:
        assert self.world is not None
        return self.register(
            invoice_obj(self.world, invoice_id, "paid", period=PERIOD, paid_at=T0 + 5, **fields)
        )

    def register(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """Stripe's current state of an invoice, as a re-fetch answers it."""
        self.invoices[invoice["id"]] = invoice
        return invoice

    def _dated(self) -> dict[str, str]:
        return stripe_date(self.answered_at) if self.answered_at is not None else {}

    def install(self, mock: respx.MockRouter) -> dict[str, respx.Route]:
        def invoice_payments(request: httpx.Request) -> httpx.Response:
            intent = request.url.params["payment[payment_intent]"]
            invoice = intent.removeprefix("pi_")
            data = []
            if invoice in self.invoices:
                data.append(
                    {
                        "id": f"inpay_{invoice}",
                        "object": "invoice_payment",
                        "amount_paid": self.invoices[invoice]["amount_paid"],
                        "amount_requested": self.invoices[invoice]["amount_due"],
                        "currency": "usd",
                        "invoice": invoice,
                        "is_default": True,
                        "livemode": False,
                        "payment": {"type": "payment_intent", "payment_intent": intent},
                        "status": "paid",
                        "status_transitions": self.invoices[invoice]["status_transitions"],
                    }
                )
            return httpx.Response(
                200, json={"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": data}
            )

        return {
            "invoice_payments": mock.get("/v1/invoice_payments").mock(side_effect=invoice_payments),
            "invoice": mock.get(url__regex=r"/v1/invoices/(?P<invoice>in_\w+)$").mock(
                side_effect=lambda request, invoice: httpx.Response(
                    200, json=self.invoices[invoice], headers=self._dated()
                )
            ),
            "charge": mock.get(url__regex=r"/v1/charges/ch_(?P<invoice>\w+)$").mock(
                side_effect=lambda request, invoice: httpx.Response(
                    200,
                    json={
                        "id": f"ch_{invoice}",
                        "object": "charge",
                        "amount": self.invoices[invoice]["amount_paid"],
                        "payment_intent": f"pi_{invoice}",
                    },
                )
            ),
        }


Payments = tuple[FakePayments, dict[str, respx.Route]]


def stripe_date(moment: int) -> dict[str, str]:
    """The `Date` header of an answer Stripe gave at `moment` (unix s)."""
    return {"Date": formatdate(moment, usegmt=True)}


@contextmanager
def mocked_payments(settings: Settings) -> Iterator[Payments]:
    """Stripe answered by a FakePayments (for each test module's `stripe_payments` fixture)."""
    fake = FakePayments()
    with respx.mock(base_url=settings.stripe_api_base, assert_all_called=False) as mock:
        yield fake, fake.install(mock)


def refund(
    invoice_id: str, refund_id: str, amount: int, status: str, *, by_charge: bool = False
) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "currency": "usd",
        "charge": f"ch_{invoice_id}",
        "payment_intent": None if by_charge else f"pi_{invoice_id}",
        "status": status,
        "reason": "requested_by_customer",
        "created": T0 + 100,
    }


def dispute(invoice_id: str, dispute_id: str, amount: int, status: str) -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": "usd",
        "charge": f"ch_{invoice_id}",
        "payment_intent": f"pi_{invoice_id}",
        "status": status,
        "reason": "fraudulent",
        "created": T0 + 200,
    }
