"""Stripe subscriptions that have no row of ours (orphans): what they charged, refunding it, ending them.

`billing sync --repair` uses these; every mutating call carries an idempotency key derived from
Stripe's own ids, so a repair interrupted at any point and run again never refunds twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from app.stripe.base import StripeBase

# Refunds in these states hand nothing back; the others (pending, succeeded, ...) count as refunded.
VOID_REFUND_STATUSES = frozenset({"failed", "canceled"})


@dataclass(frozen=True, slots=True)
class StripeCharged:
    """One payment collected on an invoice of a subscription, by PaymentIntent."""

    invoice_id: str
    payment_intent_id: str
    amount: int
    currency: str


class OrphanCalls(StripeBase):
    async def subscription_payments(self, subscription_id: str) -> list[StripeCharged]:
        """What the subscription's paid invoices collected through PaymentIntents (amounts paid from
        the customer's balance have no payment to refund and are left out)."""
        charged: list[StripeCharged] = []
        starting_after: str | None = None
        while True:
            page = await self._paid_invoices(subscription_id, starting_after)
            for invoice in page.data:
                charged += await self._invoice_payments(invoice.id)
            if not page.has_more or not page.data:
                return charged
            starting_after = page.data[-1].id

    async def _paid_invoices(self, subscription_id: str, starting_after: str | None) -> Any:
        params: dict[str, Any] = {"subscription": subscription_id, "status": "paid", "limit": 100}
        if starting_after:
            params["starting_after"] = starting_after
        return await self._call(
            "invoices.list",
            lambda: self._client.v1.invoices.list_async(params=params),  # type: ignore[arg-type]
        )

    async def _invoice_payments(self, invoice_id: str) -> list[StripeCharged]:
        page = await self._call(
            "invoice_payments.list",
            lambda: self._client.v1.invoice_payments.list_async(params={"invoice": invoice_id, "limit": 100}),
        )
        found: list[StripeCharged] = []
        for item in page.data:
            payment = item.to_dict()
            details = payment.get("payment") or {}
            intent = details.get("payment_intent")
            intent_id = intent.get("id") if isinstance(intent, dict) else intent
            amount = int(payment.get("amount_paid") or 0)
            if payment.get("status") != "paid" or not intent_id or amount <= 0:
                continue
            found.append(
                StripeCharged(invoice_id, str(intent_id), amount, str(payment.get("currency") or ""))
            )
        return found

    async def refunded_amount(self, payment_intent_id: str) -> int:
        """How much of the PaymentIntent's payment has been (or is being) refunded already."""
        page = await self._call(
            "refunds.list",
            lambda: self._client.v1.refunds.list_async(
                params={"payment_intent": payment_intent_id, "limit": 100}
            ),
        )
        return sum(
            int(refund.amount or 0) for refund in page.data if refund.status not in VOID_REFUND_STATUSES
        )

    async def refund_payment(
        self, payment_intent_id: str, *, amount: int, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Refund `amount` of the PaymentIntent's payment; returns the refund id."""
        refund = await self._call(
            "refunds.create",
            lambda: self._client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_intent_id,
                    "amount": amount,
                    "reason": "duplicate",
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(refund.id)

    async def cancel_orphan_subscription(self, subscription_id: str, *, idempotency_key: str) -> None:
        """End it now, with no proration credit and no final invoice (what it charged is refunded);
        one that is already gone is fine."""

        async def cancel() -> None:
            try:
                await self._client.v1.subscriptions.cancel_async(
                    subscription_id,
                    params={"invoice_now": False, "prorate": False},
                    options={"idempotency_key": idempotency_key},
                )
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise

        await self._call("subscriptions.cancel", cancel)
