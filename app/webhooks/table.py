"""Which handler processes each Stripe event type; a type not listed here is ignored."""

from __future__ import annotations

from app.webhooks.context import Handler
from app.webhooks.handlers import (
    checkout_completed,
    customer_created,
    invoice_created,
    invoice_finalized,
    invoice_paid,
    invoice_payment_failed,
    payment_intent_settled,
    subscription_changed,
    trial_will_end,
)
from app.webhooks.reversal_handlers import dispute_changed, refund_changed

HANDLERS: dict[str, Handler] = {
    "customer.created": customer_created,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    "customer.subscription.trial_will_end": trial_will_end,
    "invoice.created": invoice_created,
    "invoice.finalized": invoice_finalized,
    "invoice.paid": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "checkout.session.completed": checkout_completed,
    "payment_intent.succeeded": payment_intent_settled,
    "payment_intent.payment_failed": payment_intent_settled,
    "refund.created": refund_changed,
    "refund.updated": refund_changed,
    "refund.failed": refund_changed,
    "charge.dispute.created": dispute_changed,
    "charge.dispute.updated": dispute_changed,
    "charge.dispute.closed": dispute_changed,
}
