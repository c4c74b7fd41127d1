"""Stripe customers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.stripe.base import StripeBase


@dataclass(frozen=True, slots=True)
class StripeCustomer:
    id: str
    email: str | None


class CustomerCalls(StripeBase):
    async def create_customer(
        self,
        *,
        email: str | None,
        metadata: dict[str, str],
        idempotency_key: str,
        test_clock: str | None = None,
    ) -> StripeCustomer:
        """A Stripe customer; with `test_clock`, one whose subscriptions live on that Stripe test
        clock's time (at most three customers per clock)."""
        params: dict[str, Any] = {"metadata": metadata}
        if email:
            params["email"] = email
        if test_clock:
            params["test_clock"] = test_clock
        customer = await self._call(
            "customers.create",
            lambda: self._client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripeCustomer(id=customer.id, email=customer.email)

    async def set_customer_email(
        self, customer_id: str, email: str, *, idempotency_key: str
    ) -> StripeCustomer:
        """Set the email Stripe sends the customer's receipts and invoices to."""
        customer = await self._call(
            "customers.update",
            lambda: self._client.v1.customers.update_async(
                customer_id, params={"email": email}, options={"idempotency_key": idempotency_key}
            ),
        )
        return StripeCustomer(id=customer.id, email=customer.email)

    async def retrieve_customer(self, customer_id: str) -> StripeCustomer:
        customer = await self._call(
            "customers.retrieve", lambda: self._client.v1.customers.retrieve_async(customer_id)
        )
        return StripeCustomer(id=customer.id, email=customer.email)

    async def update_customer_details(
        self, customer_id: str, *, name: str, address: dict[str, str], idempotency_key: str
    ) -> None:
        """Set the name and billing address Stripe prints on the customer's invoices (as Checkout
        and the billing portal collect them)."""
        await self._call(
            "customers.update",
            lambda: self._client.v1.customers.update_async(
                customer_id,
                params={"name": name, "address": address},  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
