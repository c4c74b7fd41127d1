"""Which handler processes each Stripe event type; a type not listed here is ignored."""

from __future__ import annotations

from app.stripe.invoices import StripeInvoice
from app.stripe.shapes import (
    StripeCheckoutCompleted,
    StripeCustomerObject,
    StripePaymentIntent,
    StripeReversal,
)
from app.stripe.subscriptions import StripeSubscriptionState
from app.webhooks.context import Handler, parsed
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

_subscription = StripeSubscriptionState.from_payload
_invoice = StripeInvoice.from_payload

HANDLERS: dict[str, Handler] = {
    "customer.created": parsed(StripeCustomerObject.from_payload, customer_created),
    "customer.subscription.created": parsed(_subscription, subscription_changed),
    "customer.subscription.updated": parsed(_subscription, subscription_changed),
    "customer.subscription.deleted": parsed(_subscription, subscription_changed),
    "customer.subscription.trial_will_end": parsed(_subscription, trial_will_end),
    "invoice.created": parsed(_invoice, invoice_created),
    "invoice.finalized": parsed(_invoice, invoice_finalized),
    "invoice.paid": parsed(_invoice, invoice_paid),
    "invoice.payment_failed": parsed(_invoice, invoice_payment_failed),
    "checkout.session.completed": parsed(StripeCheckoutCompleted.from_payload, checkout_completed),
    "payment_intent.succeeded": parsed(StripePaymentIntent.from_payload, payment_intent_settled),
    "payment_intent.payment_failed": parsed(StripePaymentIntent.from_payload, payment_intent_settled),
    "refund.created": parsed(StripeReversal.refund, refund_changed),
    "refund.updated": parsed(StripeReversal.refund, refund_changed),
    "refund.failed": parsed(StripeReversal.refund, refund_changed),
    "charge.dispute.created": parsed(StripeReversal.dispute, dispute_changed),
    "charge.dispute.updated": parsed(StripeReversal.dispute, dispute_changed),
    "charge.dispute.closed": parsed(StripeReversal.dispute, dispute_changed),
}
