"""The marketplace event types and the payload parts they share (documented in docs/events.md)."""

from __future__ import annotations

from typing import Any

from app.models import Invoice, Subscription

SUBSCRIPTION_CREATED = "subscription.created"
SUBSCRIPTION_CHANGED = "subscription.changed"
SUBSCRIPTION_CANCELLED = "subscription.cancelled"
SUBSCRIPTION_TRIAL_ENDING = "subscription.trial_ending"
API_KEY_SUSPENDED = "api_key.suspended"
API_KEY_RESTORED = "api_key.restored"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
USAGE_THRESHOLD_REACHED = "usage.threshold_reached"
QUOTA_EXHAUSTED = "quota.exhausted"
USAGE_QUOTA_OVERRUN = "usage.quota_overrun"

# The outbound notification records (`Outbox.notify` topics) and the event each is delivered as.
NOTIFY_EVENT_TYPES = {"trial_will_end": SUBSCRIPTION_TRIAL_ENDING, "quota_overrun": USAGE_QUOTA_OVERRUN}

EVENT_TYPES = (
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_TRIAL_ENDING,
    API_KEY_SUSPENDED,
    API_KEY_RESTORED,
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
    USAGE_THRESHOLD_REACHED,
    QUOTA_EXHAUSTED,
    USAGE_QUOTA_OVERRUN,
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def subscription_payload(subscription: Subscription) -> dict[str, Any]:
    return {
        "subscription_id": str(subscription.id),
        "consumer_id": str(subscription.consumer_id),
        "api_id": subscription.api_id,
        "status": subscription.status,
        "pricing_plan_id": str(subscription.pricing_plan_id),
        "plan_version": subscription.plan_version,
        "current_period_start": _iso(subscription.current_period_start),
        "current_period_end": _iso(subscription.current_period_end),
        "cancel_at_period_end": subscription.cancel_at_period_end,
    }


def invoice_payload(invoice: Invoice) -> dict[str, Any]:
    return {
        "invoice_id": str(invoice.id),
        "stripe_invoice_id": invoice.stripe_invoice_id,
        "number": invoice.number,
        "invoice_status": invoice.status,
        "amount_due": invoice.amount_due,
        "amount_paid": invoice.amount_paid,
        "currency": invoice.currency,
    }
