"""Re-fetching the objects webhook events name, and the dunning cancellation.

An event's snapshot may be older than what Stripe holds now; these calls answer with Stripe's
current state, parsed (the shapes of `app/stripe/`).
"""

from __future__ import annotations

from dataclasses import replace

import stripe

from app.stripe.base import StripeBase, answered_at
from app.stripe.invoices import StripeInvoice, invoice_with_all_lines
from app.stripe.subscriptions import StripeSubscriptionState


class ObjectCalls(StripeBase):
    async def retrieve_subscription(self, subscription_id: str) -> StripeSubscriptionState:
        subscription = await self._call(
            "subscriptions.retrieve",
            lambda: self._client.v1.subscriptions.retrieve_async(subscription_id),
        )
        state = StripeSubscriptionState.from_payload(subscription.to_dict())
        return replace(state, answered_at=answered_at(subscription))

    async def retrieve_invoice(self, invoice_id: str) -> StripeInvoice:
        """The invoice with all its lines."""
        invoice = await self._call(
            "invoices.retrieve", lambda: self._client.v1.invoices.retrieve_async(invoice_id)
        )
        complete = await invoice_with_all_lines(self, invoice.to_dict())
        return replace(complete, answered_at=answered_at(invoice))

    async def cancel_unpaid_subscription(self, subscription_id: str, *, idempotency_key: str) -> None:
        """Cancel a subscription whose payment retries ended; one that is already gone is fine."""

        async def cancel() -> None:
            try:
                await self._client.v1.subscriptions.cancel_async(
                    subscription_id, options={"idempotency_key": idempotency_key}
                )
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise

        await self._call("subscriptions.cancel", cancel)
