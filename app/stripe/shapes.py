"""Stripe's JSON read once: the small objects webhooks and services receive, and the readers of
the fields every shape shares (expandable ids, unix timestamps).

Each object is parsed from an API answer or an event's `data.object` alike, for the pinned API
version and the older shapes still in flight (events are delivered with the version they were
made with). Fields that moved between versions are settled here, never by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def stripe_id(value: Any) -> str | None:
    """An expandable field's id: Stripe sends the id, or the object when it was expanded."""
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


def timestamp(value: Any) -> datetime | None:
    """A unix timestamp field (null or absent: None)."""
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def metadata_of(obj: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in (obj.get("metadata") or {}).items()}


@dataclass(frozen=True, slots=True)
class StripeCustomerObject:
    """A Customer as `customer.*` events and the customer list show it."""

    id: str
    email: str | None
    default_payment_method: str | None
    metadata: dict[str, str]

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeCustomerObject:
        settings = obj.get("invoice_settings") or {}
        return cls(
            id=str(obj["id"]),
            email=obj.get("email") or None,
            default_payment_method=stripe_id(settings.get("default_payment_method")),
            metadata=metadata_of(obj),
        )


@dataclass(frozen=True, slots=True)
class StripeCheckoutCompleted:
    """A completed Checkout Session: the subscription it started and how it names our row."""

    id: str
    subscription: str | None
    client_reference_id: str | None
    metadata: dict[str, str]

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeCheckoutCompleted:
        return cls(
            id=str(obj["id"]),
            subscription=stripe_id(obj.get("subscription")),
            client_reference_id=obj.get("client_reference_id") or None,
            metadata=metadata_of(obj),
        )


@dataclass(frozen=True, slots=True)
class StripePaymentIntent:
    """A PaymentIntent as far as we read it: the invoice it paid, which only API versions before
    2025-03-31 name on it (since then the link is an InvoicePayment)."""

    id: str
    invoice: str | None

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripePaymentIntent:
        return cls(id=str(obj["id"]), invoice=stripe_id(obj.get("invoice")))


@dataclass(frozen=True, slots=True)
class StripeReversal:
    """A Refund or a Dispute: its state and amount, and the payment it concerns.

    Neither names its invoice since API 2025-03-31: they name a charge and (refunds, disputes
    since 2023) a PaymentIntent; older charges carried `invoice`, read when present.
    """

    id: str
    status: str
    amount: int
    currency: str
    charge: str | None
    payment_intent: str | None
    invoice: str | None

    @classmethod
    def refund(cls, obj: dict[str, Any]) -> StripeReversal:
        return cls._parse(obj, default_status="pending")

    @classmethod
    def dispute(cls, obj: dict[str, Any]) -> StripeReversal:
        return cls._parse(obj, default_status="needs_response")

    @classmethod
    def _parse(cls, obj: dict[str, Any], *, default_status: str) -> StripeReversal:
        return cls(
            id=str(obj["id"]),
            status=str(obj.get("status") or default_status),
            amount=int(obj.get("amount") or 0),
            currency=str(obj.get("currency") or ""),
            charge=stripe_id(obj.get("charge")),
            payment_intent=stripe_id(obj.get("payment_intent")),
            invoice=stripe_id(obj.get("invoice")),
        )
