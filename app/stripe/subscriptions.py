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
    # A plan change whose payment failed (a pending update): Stripe's reason, when it gave one.
    payment_error: str | None = None

    @property
    def change_pending(self) -> bool:
        """True when Stripe kept a price change pending because its invoice was not paid."""
        return bool(self.payload.get("pending_update"))


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
        proration_date: int,
        idempotency_key: str,
    ) -> StripeSubscription:
        """Move the subscription's one item to another price; the prorated difference for the rest
        of the period, as of `proration_date` (what `preview_invoice` showed for that date), is
        invoiced at once.

        As a pending update (`pending_if_incomplete`): when that invoice's payment fails, Stripe
        leaves the subscription on its old price and answers with `pending_update` set
        (`payment_error` then holds Stripe's reason when it gave one). Pending updates take no
        `automatic_tax`: a subscription keeps the Stripe Tax setting it was created with.
        """
        params: dict[str, Any] = {
            "items": [{"id": item_id, "price": price_id}],
            "proration_behavior": "always_invoice",
            "proration_date": proration_date,
            "payment_behavior": "pending_if_incomplete",
            "expand": EXPAND_FIRST_PAYMENT,
        }
        updated = await self._call(
            "subscriptions.update",
            lambda: self._client.v1.subscriptions.update_async(
                subscription_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        result = _subscription(updated)
        if not result.change_pending:
            return result
        invoice = result.payload.get("latest_invoice")
        invoice_id = invoice.get("id") if isinstance(invoice, dict) else invoice
        error = await self._payment_error(str(invoice_id)) if invoice_id else None
        return StripeSubscription(payload=result.payload, client_secret=None, payment_error=error)

    async def _payment_error(self, invoice_id: str) -> str | None:
        """Stripe's message for why the invoice's payment failed, if it gave one."""
        page = await self._call(
            "invoice_payments.list",
            lambda: self._client.v1.invoice_payments.list_async(
                params={"invoice": invoice_id, "expand": ["data.payment.payment_intent"], "limit": 10}
            ),
        )
        for item in page.data:
            intent = (item.to_dict().get("payment") or {}).get("payment_intent")
            if not isinstance(intent, dict):
                continue
            message = (intent.get("last_payment_error") or {}).get("message")
            if isinstance(message, str) and message:
                return message
            if intent.get("status") == "requires_action":
                return "Your card needs authentication (3D Secure) for this payment."
        return None

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
