"""Re-fetching the objects webhook events name, and the dunning cancellation.

Event handlers mirror Stripe's JSON with one sync function per object type (the same functions
the subscription service and `billing sync` use), so these calls hand back Stripe's JSON.
"""

from __future__ import annotations

from typing import Any

import stripe

from app.stripe.base import StripeBase
from app.stripe.invoices import with_all_lines


class ObjectCalls(StripeBase):
    async def retrieve_subscription_json(self, subscription_id: str) -> dict[str, Any]:
        subscription = await self._call(
            "subscriptions.retrieve",
            lambda: self._client.v1.subscriptions.retrieve_async(subscription_id),
        )
        return subscription.to_dict(for_json=True)

    async def retrieve_invoice_json(self, invoice_id: str) -> dict[str, Any]:
        invoice = await self._call(
            "invoices.retrieve", lambda: self._client.v1.invoices.retrieve_async(invoice_id)
        )
        return await with_all_lines(self, invoice.to_dict(for_json=True))

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
