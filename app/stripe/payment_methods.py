"""Stripe payment methods: attach, detach, the customer's invoice default, setup intents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.stripe.base import StripeBase


@dataclass(frozen=True, slots=True)
class StripeCard:
    id: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None

    @classmethod
    def from_payload(cls, payment_method: dict[str, Any]) -> StripeCard:
        """A PaymentMethod's JSON; a non-card one has no `card` details."""
        card = payment_method.get("card") or {}
        return cls(
            id=payment_method["id"],
            type=payment_method.get("type") or "card",
            brand=card.get("brand"),
            last4=card.get("last4"),
            exp_month=card.get("exp_month"),
            exp_year=card.get("exp_year"),
        )


def card_of(stripe_object: Any) -> StripeCard:
    return StripeCard.from_payload(stripe_object.to_dict())


class PaymentMethodCalls(StripeBase):
    async def attach_payment_method(
        self, payment_method_id: str, *, customer: str, idempotency_key: str
    ) -> StripeCard:
        """Attach a PaymentMethod from Stripe.js to the customer; a declined card raises 402."""
        attached = await self._call(
            "payment_methods.attach",
            lambda: self._client.v1.payment_methods.attach_async(
                payment_method_id,
                params={"customer": customer},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return card_of(attached)

    async def detach_payment_method(self, payment_method_id: str, *, idempotency_key: str) -> None:
        await self._call(
            "payment_methods.detach",
            lambda: self._client.v1.payment_methods.detach_async(
                payment_method_id, options={"idempotency_key": idempotency_key}
            ),
        )

    async def set_default_payment_method(
        self, *, customer: str, payment_method_id: str | None, idempotency_key: str
    ) -> None:
        """The card Stripe charges for the customer's invoices (subscriptions included)."""
        await self._call(
            "customers.update",
            lambda: self._client.v1.customers.update_async(
                customer,
                params={"invoice_settings": {"default_payment_method": payment_method_id or ""}},
                options={"idempotency_key": idempotency_key},
            ),
        )

    async def create_setup_intent(self, *, customer: str, idempotency_key: str) -> str:
        """A SetupIntent for collecting a card with SCA in Stripe.js; returns its client secret."""
        intent = await self._call(
            "setup_intents.create",
            lambda: self._client.v1.setup_intents.create_async(
                params={"customer": customer, "usage": "off_session", "payment_method_types": ["card"]},  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(intent.client_secret)
