"""Stripe subscriptions: create, change price with proration, cancel, and invoice previews."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from app.stripe.base import StripeBase, answered_at
from app.stripe.invoices import StripeInvoice, StripeInvoiceLine
from app.stripe.shapes import metadata_of, stripe_id, timestamp


@dataclass(frozen=True, slots=True)
class StripeSubscriptionState:
    """The parts of a Stripe Subscription object that we mirror (its first item and price)."""

    id: str
    status: str
    customer: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    trial_end: datetime | None
    item_id: str | None
    price_id: str | None
    metadata: dict[str, str]
    created: int | None = None
    latest_invoice: str | None = None
    # Its currency and its fixed amount per period over all items (metered prices add 0).
    currency: str | None = None
    fixed_amount: int = 0
    # A plan with overage has a second item: its metered overage price (the plan's price is the
    # licensed one).
    overage_item_id: str | None = None
    overage_price_id: str | None = None
    # An API answer's time by Stripe's clock (`answered_at`); None in an event or a replay.
    answered_at: int | None = None

    @property
    def as_of(self) -> int | None:
        """The moment, by Stripe's clock, this snapshot is known to be at least as new as: its
        answer's time, else the newest of its own timestamps (its creation, its cancellation)."""
        if self.answered_at is not None:
            return self.answered_at
        own = [self.created] + [int(t.timestamp()) for t in (self.canceled_at, self.ended_at) if t]
        return max((t for t in own if t is not None), default=None)

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeSubscriptionState:
        """From Stripe's JSON (an API answer or an event's `data.object`).

        Since API version 2025-03-31 the period lives on the subscription item; older versions
        (and the emulator) keep it on the subscription, so both are read. The item names its
        price as `price` (a legacy `plan` before), an id or the expanded object.
        """
        items = (obj.get("items") or {}).get("data") or []
        item, overage = _plan_and_overage_items(items)
        start = item.get("current_period_start") or obj.get("current_period_start")
        end = item.get("current_period_end") or obj.get("current_period_end")
        return cls(
            id=obj["id"],
            status=obj["status"],
            customer=stripe_id(obj.get("customer")),
            current_period_start=timestamp(start),
            current_period_end=timestamp(end),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
            canceled_at=timestamp(obj.get("canceled_at")),
            ended_at=timestamp(obj.get("ended_at")),
            trial_end=timestamp(obj.get("trial_end")),
            item_id=stripe_id(item.get("id")),
            price_id=stripe_id(item.get("price") or item.get("plan")),
            metadata=metadata_of(obj),
            created=int(obj["created"]) if obj.get("created") else None,
            latest_invoice=stripe_id(obj.get("latest_invoice")),
            currency=_currency(obj, items),
            fixed_amount=sum(_fixed_amount(item) for item in items),
            overage_item_id=stripe_id(overage.get("id")),
            overage_price_id=stripe_id(overage.get("price") or overage.get("plan")),
        )


def _plan_and_overage_items(items: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The item of the plan's price and the overage item (empty when there is none).

    One item is the plan's, whatever its usage type (a pay-per-use plan's price is metered). Of
    two, the plan's price is the licensed one and the overage price the metered one; a price that
    is not expanded cannot tell, so the first item stays the plan's, as we create them.
    """
    if not items:
        return {}, {}
    if len(items) == 1:
        return items[0], {}
    metered = [item for item in items if _usage_type(item) == "metered"]
    licensed = [item for item in items if _usage_type(item) == "licensed"]
    if len(metered) == 1 and licensed:
        return licensed[0], metered[0]
    return items[0], items[1]


def _usage_type(item: dict[str, Any]) -> str | None:
    price = _price_object(item)
    usage = (price.get("recurring") or {}).get("usage_type") or price.get("usage_type")
    return str(usage) if usage else None


def _price_object(item: dict[str, Any]) -> dict[str, Any]:
    price = item.get("price") or item.get("plan") or {}
    return price if isinstance(price, dict) else {}


def _currency(obj: dict[str, Any], items: list[dict[str, Any]]) -> str | None:
    currency = obj.get("currency") or next(
        (_price_object(item).get("currency") for item in items if _price_object(item).get("currency")), None
    )
    return str(currency) if currency else None


def _fixed_amount(item: dict[str, Any]) -> int:
    """An item's fixed amount per period: its price's `unit_amount` (a legacy plan's `amount`) times
    its quantity."""
    price = _price_object(item)
    return int(price.get("unit_amount") or price.get("amount") or 0) * int(item.get("quantity") or 1)


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    """A subscription Stripe answered with, plus the client secret Stripe.js needs when SCA is
    pending."""

    state: StripeSubscriptionState
    client_secret: str | None
    # True when Stripe kept a price change pending because its invoice was not paid.
    change_pending: bool = False
    # A plan change whose payment failed (a pending update): Stripe's reason, when it gave one.
    payment_error: str | None = None


@dataclass(frozen=True, slots=True)
class StripeInvoicePreview:
    amount_due: int
    currency: str
    lines: tuple[StripeInvoiceLine, ...]


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
        state=replace(StripeSubscriptionState.from_payload(payload), answered_at=answered_at(stripe_object)),
        client_secret=intent.get("client_secret") if needs_action else None,
        change_pending=bool(payload.get("pending_update")),
    )


# With the pinned API version the first invoice exposes `confirmation_secret`; it is not expanded
# by default.
EXPAND_FIRST_PAYMENT = ["latest_invoice.confirmation_secret"]
# Stripe Tax (STRIPE_TAX_ENABLED): sent only when enabled, so accounts without Stripe Tax see no change.
AUTOMATIC_TAX = {"enabled": True}


def overage_items(item_id: str | None, price_id: str | None) -> list[dict[str, Any]]:
    """`items[]` that put the overage item on `price_id`: swap it, add it, or delete it (no price)."""
    if item_id is not None and price_id is not None:
        return [{"id": item_id, "price": price_id}]
    if item_id is not None:
        return [{"id": item_id, "deleted": True}]
    if price_id is not None:
        return [{"price": price_id}]
    return []


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
        overage_price_id: str | None = None,
    ) -> StripeSubscription:
        """Subscribe the customer to one price (and its metered overage price, as a second item:
        it bills nothing up front). Stripe charges at once (or starts the trial);
        when the card needs authentication the subscription comes back `incomplete`. With
        `automatic_tax`, Stripe Tax adds tax from the customer's location to every invoice."""
        items: list[dict[str, Any]] = [{"price": price_id}]
        if overage_price_id is not None:
            items.append({"price": overage_price_id})  # metered: no quantity
        params: dict[str, Any] = {
            "customer": customer,
            "items": items,
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

    async def payment_client_secret(self, subscription_id: str) -> str | None:
        """The client secret of the first payment an incomplete subscription waits for (None once
        it waits for nothing), as `create_subscription` answered it."""
        retrieved = await self._call(
            "subscriptions.retrieve",
            lambda: self._client.v1.subscriptions.retrieve_async(
                subscription_id,
                params={"expand": EXPAND_FIRST_PAYMENT},
            ),
        )
        return _subscription(retrieved).client_secret

    async def change_subscription_price(
        self,
        subscription_id: str,
        *,
        item_id: str,
        price_id: str,
        proration_date: int,
        idempotency_key: str,
        overage_item_id: str | None = None,
        overage_price_id: str | None = None,
    ) -> StripeSubscription:
        """Move the subscription's plan item to another price; the prorated difference for the rest
        of the period, as of `proration_date` (what `preview_invoice` showed for that date), is
        invoiced at once. The overage item follows the new plan: swapped to `overage_price_id`,
        added, or deleted (`overage_item_id` without a new price); metered, it prorates nothing.

        As a pending update (`pending_if_incomplete`): when that invoice's payment fails, Stripe
        leaves the subscription on its old price and answers with `pending_update` set
        (`payment_error` then holds Stripe's reason when it gave one). Pending updates take no
        `automatic_tax`: a subscription keeps the Stripe Tax setting it was created with.

        A pending update may only change items' prices and quantities, so a change that adds or
        deletes the overage item is sent with `error_if_incomplete`: when its payment fails,
        Stripe changes nothing and answers with a card error (402 `PaymentRequired`, Stripe's message).
        """
        adds_or_deletes_an_item = (overage_item_id is None) != (overage_price_id is None)
        params: dict[str, Any] = {
            "items": [{"id": item_id, "price": price_id}, *overage_items(overage_item_id, overage_price_id)],
            "proration_behavior": "always_invoice",
            "proration_date": proration_date,
            "payment_behavior": "error_if_incomplete" if adds_or_deletes_an_item else "pending_if_incomplete",
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
        invoice = result.state.latest_invoice
        error = await self._payment_error(invoice) if invoice else None
        return replace(result, client_secret=None, payment_error=error)

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
        overage_item_id: str | None = None,
        overage_price_id: str | None = None,
    ) -> StripeInvoicePreview:
        """The invoice Stripe would issue for moving to `price_id` (with prorations, the overage
        item following as in `change_subscription_price`), or for a new subscription to it when
        there is none."""
        item: dict[str, Any] = {"price": price_id}
        details: dict[str, Any] = {"items": [item, *overage_items(overage_item_id, overage_price_id)]}
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
        # A preview is read like any invoice (its lines by the one line parser); it may have no id.
        parsed = StripeInvoice.from_payload({"id": "", **payload})
        currency = str(payload.get("currency") or "")
        return StripeInvoicePreview(amount_due=parsed.amount_due, currency=currency, lines=parsed.lines)
