"""Stripe subscriptions: create, change price with proration, cancel, and invoice previews."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.stripe.base import StripeBase


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    """Stripe's subscription JSON, plus the client secret Stripe.js needs when SCA is pending."""

    payload: dict[str, Any]
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class StripePreviewLine:
    description: str | None
    amount: int
    currency: str
    proration: bool
    period_start: int | None
    period_end: int | None


@dataclass(frozen=True, slots=True)
class StripeInvoicePreview:
    amount_due: int
    currency: str
    lines: list[StripePreviewLine]


def _payment_intent(invoice: Any) -> dict[str, Any]:
    """The first payment's intent: `confirmation_secret` since API 2025-03-31, else `payment_intent`."""
    if not isinstance(invoice, dict):
        return {}
    intent = invoice.get("payment_intent")
    found: dict[str, Any] = intent if isinstance(intent, dict) else {}
    secret = (invoice.get("confirmation_secret") or {}).get("client_secret")
    if secret and not found.get("client_secret"):
        found = {**found, "client_secret": secret}
    return found


def _subscription(stripe_object: Any) -> StripeSubscription:
    payload: dict[str, Any] = stripe_object.to_dict()
    intent = _payment_intent(payload.get("latest_invoice"))
    # Only an incomplete subscription waits for the consumer (SCA, or another card after a decline).
    needs_action = payload.get("status") == "incomplete"
    return StripeSubscription(
        payload=payload, client_secret=intent.get("client_secret") if needs_action else None
    )


def _line(line: dict[str, Any]) -> StripePreviewLine:
    details = (line.get("parent") or {}).get("subscription_item_details") or {}
    period = line.get("period") or {}
    return StripePreviewLine(
        description=line.get("description"),
        amount=int(line.get("amount") or 0),
        currency=str(line.get("currency") or ""),
        proration=bool(details.get("proration", line.get("proration", False))),
        period_start=period.get("start"),
        period_end=period.get("end"),
    )


# With the pinned API version the first invoice exposes `confirmation_secret`; it is not expanded
# by default.
EXPAND_FIRST_PAYMENT = ["latest_invoice.confirmation_secret"]
# Stripe Tax (STRIPE_TAX_ENABLED): sent only when enabled, so accounts without Stripe Tax see no change.
AUTOMATIC_TAX = {"enabled": True}


class SubscriptionCalls(StripeBase):
    async def create_subscription(
        self,
        *,
        customer: str,
        price_id: str,
        payment_method: str | None,
        trial_period_days: int | None,
        metadata: dict[str, str],
        idempotency_key: str,
        automatic_tax: bool = False,
    ) -> StripeSubscription:
        """Subscribe the customer to one price. Stripe charges at once (or starts the trial);
        when the card needs authentication the subscription comes back `incomplete`. With
        `automatic_tax`, Stripe Tax adds tax from the customer's location to every invoice."""
        params: dict[str, Any] = {
            "customer": customer,
            "items": [{"price": price_id}],
            "payment_behavior": "allow_incomplete",
            "metadata": metadata,
            "expand": EXPAND_FIRST_PAYMENT,
        }
        if payment_method:
            params["default_payment_method"] = payment_method
        if trial_period_days:
            params["trial_period_days"] = trial_period_days
        if automatic_tax:
            params["automatic_tax"] = AUTOMATIC_TAX
        created = await self._call(
            "subscriptions.create",
            lambda: self._client.v1.subscriptions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _subscription(created)

    async def change_subscription_price(
        self,
        subscription_id: str,
        *,
        item_id: str,
        price_id: str,
        idempotency_key: str,
        automatic_tax: bool = False,
    ) -> StripeSubscription:
        """Move the subscription's one item to another price; the prorated difference for the rest
        of the period is invoiced at once (what `preview_invoice` shows). With `automatic_tax`
        it is (still) taxed by Stripe Tax."""
        params: dict[str, Any] = {
            "items": [{"id": item_id, "price": price_id}],
            "proration_behavior": "always_invoice",
            "expand": EXPAND_FIRST_PAYMENT,
        }
        if automatic_tax:
            params["automatic_tax"] = AUTOMATIC_TAX
        updated = await self._call(
            "subscriptions.update",
            lambda: self._client.v1.subscriptions.update_async(
                subscription_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _subscription(updated)

    async def cancel_subscription_at_period_end(
        self, subscription_id: str, *, idempotency_key: str
    ) -> StripeSubscription:
        updated = await self._call(
            "subscriptions.update",
            lambda: self._client.v1.subscriptions.update_async(
                subscription_id,
                params={"cancel_at_period_end": True},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _subscription(updated)

    async def cancel_subscription(
        self, subscription_id: str, *, prorate: bool, idempotency_key: str, invoice_now: bool = False
    ) -> StripeSubscription:
        """End the subscription now; with `prorate`, unused time is credited to the customer; with
        `invoice_now`, a final invoice of the metered usage and prorations is made at once."""
        params: dict[str, Any] = {"prorate": True} if prorate else {}
        if invoice_now:
            params["invoice_now"] = True
        canceled = await self._call(
            "subscriptions.cancel",
            lambda: self._client.v1.subscriptions.cancel_async(
                subscription_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _subscription(canceled)

    async def preview_invoice(
        self,
        *,
        customer: str,
        price_id: str,
        subscription_id: str | None = None,
        item_id: str | None = None,
        proration_date: int | None = None,
        automatic_tax: bool = False,
    ) -> StripeInvoicePreview:
        """The invoice Stripe would issue for moving to `price_id` (with prorations), or for a new
        subscription to it when there is none."""
        item: dict[str, Any] = {"price": price_id}
        details: dict[str, Any] = {"items": [item]}
        params: dict[str, Any] = {"customer": customer, "subscription_details": details}
        if automatic_tax:
            params["automatic_tax"] = AUTOMATIC_TAX
        if subscription_id is not None:
            params["subscription"] = subscription_id
            item["id"] = item_id
            details["proration_behavior"] = "always_invoice"
            if proration_date is not None:
                details["proration_date"] = proration_date
        invoice = await self._call(
            "invoices.create_preview",
            lambda: self._client.v1.invoices.create_preview_async(params=params),  # type: ignore[arg-type]
        )
        payload: dict[str, Any] = invoice.to_dict()
        lines = (payload.get("lines") or {}).get("data") or []
        return StripeInvoicePreview(
            amount_due=int(payload.get("amount_due") or 0),
            currency=str(payload.get("currency") or ""),
            lines=[_line(line) for line in lines],
        )
