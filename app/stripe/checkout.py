"""Stripe Checkout sessions and billing-portal sessions: pages Stripe hosts for the consumer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.stripe.base import StripeBase


@dataclass(frozen=True, slots=True)
class StripeCheckoutSession:
    id: str
    url: str


class CheckoutCalls(StripeBase):
    async def create_checkout_session(
        self,
        *,
        customer: str,
        price_id: str,
        success_url: str,
        cancel_url: str,
        trial_period_days: int | None,
        client_reference_id: str,
        metadata: dict[str, str],
        idempotency_key: str,
        automatic_tax: bool = False,
        overage_price_id: str | None = None,
    ) -> StripeCheckoutSession:
        """A hosted page where the consumer pays for a subscription to `price_id` (and its metered
        overage price, a line without quantity, billed in arrears). The page collects
        the billing name and address and saves them on the (existing) customer; with
        `automatic_tax`, the subscription it starts is taxed on that address."""
        subscription_data: dict[str, Any] = {"metadata": metadata}
        if trial_period_days:
            subscription_data["trial_period_days"] = trial_period_days
        params: dict[str, Any] = {
            "mode": "subscription",
            "customer": customer,
            "line_items": [
                {"price": price_id, "quantity": 1},
                *([{"price": overage_price_id}] if overage_price_id is not None else []),
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "metadata": metadata,
            "subscription_data": subscription_data,
        }
        # The billing name and address go onto the customer, and from there onto every invoice
        # (`customer_name`, `customer_address`): the bill-to of our PDFs.
        params["billing_address_collection"] = "required"
        params["customer_update"] = {"address": "auto", "name": "auto"}
        if automatic_tax:
            params["automatic_tax"] = {"enabled": True}
        session = await self._call(
            "checkout.sessions.create",
            lambda: self._client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripeCheckoutSession(id=session.id, url=str(session.url))

    async def expire_checkout_session(self, session_id: str, *, idempotency_key: str) -> None:
        """Close an unpaid checkout page, so it can no longer start a subscription."""
        await self._call(
            "checkout.sessions.expire",
            lambda: self._client.v1.checkout.sessions.expire_async(
                session_id, options={"idempotency_key": idempotency_key}
            ),
        )

    async def create_portal_session(self, *, customer: str, return_url: str) -> str:
        """A billing-portal URL where the customer manages cards and invoices."""
        session = await self._call(
            "billing_portal.sessions.create",
            lambda: self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer, "return_url": return_url}
            ),
        )
        return str(session.url)
