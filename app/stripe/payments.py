"""Which invoice a payment paid: refunds and disputes name a charge or a PaymentIntent, and since
API 2025-03-31 the link from a PaymentIntent to its invoice is an InvoicePayment."""

from __future__ import annotations

from typing import Any

from app.stripe.base import StripeBase


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) and value else None


class PaymentCalls(StripeBase):
    async def invoice_of_payment_intent(self, payment_intent_id: str) -> str | None:
        """The id of the invoice the PaymentIntent paid, or None when it paid no invoice."""
        page = await self._call(
            "invoice_payments.list",
            lambda: self._client.v1.invoice_payments.list_async(
                params={
                    "payment": {"type": "payment_intent", "payment_intent": payment_intent_id},
                    "limit": 1,
                }
            ),
        )
        for item in page.data:
            return _id(item.to_dict().get("invoice"))
        return None

    async def payment_intent_of_charge(self, charge_id: str) -> str | None:
        charge = await self._call(
            "charges.retrieve", lambda: self._client.v1.charges.retrieve_async(charge_id)
        )
        return _id(charge.to_dict().get("payment_intent"))
