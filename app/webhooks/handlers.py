"""One handler per Stripe event type; each is idempotent and safe out of order.

Handlers get the event's `data.object`, parsed by `app/stripe/` (the table names the parser),
and the event's `created` time, and return the status
the event ends in (`processed`, or `ignored` when it concerns nothing of ours). Subscription
snapshots go through `apply_stripe_state` (older snapshots never win), invoices through
`sync_invoice` (status never moves back), earnings through a unique key (booked once).
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.earnings.booking import book_invoice_earnings
from app.entitlements.overage import bill_overage
from app.errors import DomainError
from app.events.types import INVOICE_PAID, INVOICE_PAYMENT_FAILED, invoice_payload
from app.invoices.stripe_sync import sync_invoice
from app.models import Consumer, Invoice, Subscription
from app.stripe.invoices import StripeInvoice
from app.stripe.shapes import StripeCheckoutCompleted, StripeCustomerObject, StripePaymentIntent
from app.stripe.subscriptions import StripeSubscriptionState
from app.subscriptions.lifecycle import (
    adopt_stripe_subscription,
    apply_stripe_state,
    bills_calls_differently,
    follows_price_of,
    moves_plan,
)
from app.subscriptions.repository import as_uuid, find_subscription, was_detached
from app.usage.repository import UsageRepository
from app.webhooks.context import EventContext


class NotYetKnown(DomainError):
    """The event names an object of ours we cannot find yet (its transaction may not have
    committed); the event is retried, and ends `failed` if it never appears."""

    status = 409
    code = "unknown_object"


class UsageNotReported(DomainError):
    status = 503
    code = "usage_not_reported"


async def customer_created(ctx: EventContext, obj: StripeCustomerObject) -> str:
    """Link the customer to its consumer if our own write has not (the consumer id is in metadata)."""
    consumer_id = as_uuid(obj.metadata.get("consumer_id"))
    consumer = await ctx.session.get(Consumer, consumer_id, with_for_update=True) if consumer_id else None
    if consumer is None:
        return "ignored"
    if consumer.stripe_customer_id is None:
        consumer.stripe_customer_id = obj.id
    return "processed"


async def subscription_changed(ctx: EventContext, state: StripeSubscriptionState) -> str:
    """customer.subscription.created / updated / deleted: mirror the snapshot.

    A snapshot that would move the plan goes by Stripe's current state instead: the event may be
    older than a plan change we mirrored from Stripe's answer in the same second (stamps are whole
    seconds), or than one whose answer was a replay, so its stamp alone cannot tell which is newer.
    """
    subscription = await find_subscription(
        ctx.session, stripe_subscription_id=state.id, metadata=state.metadata
    )
    if subscription is None:
        if await was_detached(ctx.session, state.metadata):
            return "ignored"
        raise NotYetKnown(f"no subscription of ours for {state.id}")
    if follows_price_of(subscription, state, observed_at=ctx.created) and await moves_plan(
        subscription, state.price_id
    ):
        state = await ctx.stripe.retrieve_subscription(state.id)
    if state.status == "unpaid":
        await ctx.dunning.retries_ended(subscription, ctx.stripe, observed_at=ctx.created)
    else:
        if follows_price_of(subscription, state, observed_at=ctx.created) and await bills_calls_differently(
            subscription, state.price_id
        ):
            # A plan change made at Stripe (portal, dashboard): the calls until then are billed by
            # the plan they were made on, as when the change is made through our API.
            changed_at = datetime.fromtimestamp(ctx.created, tz=UTC)
            if not await ctx.usage.flush(subscription.id, changed_at):
                raise UsageNotReported(
                    "usage until the plan change not yet recorded (metering or Stripe failed)"
                )
        await apply_stripe_state(ctx.outbox, subscription, state, observed_at=ctx.created)
    return "processed"


async def trial_will_end(ctx: EventContext, state: StripeSubscriptionState) -> str:
    """Tell the consumer the trial ends soon (an outbound notification, once per trial end)."""
    subscription = await find_subscription(
        ctx.session, stripe_subscription_id=state.id, metadata=state.metadata
    )
    if subscription is None:
        raise NotYetKnown(f"no subscription of ours for {state.id}")
    trial_end = state.trial_end.isoformat() if state.trial_end else None
    await ctx.outbox.notify(
        subscription,
        "trial_will_end",
        f"{subscription.id}:{trial_end}",
        {"consumer_id": str(subscription.consumer_id), "trial_end": trial_end},
    )
    return "processed"


async def _mirror_invoice(ctx: EventContext, obj: StripeInvoice, observed_at: int) -> Invoice:
    invoice = await sync_invoice(
        ctx.session,
        await ctx.stripe.with_all_lines(obj),
        observed_at=observed_at,
        issuer=ctx.settings.invoice_issuer_name,
    )
    if invoice is None:
        raise NotYetKnown(f"no consumer of ours for the customer of invoice {obj.id}")
    return invoice


async def _invoice_subscription(ctx: EventContext, invoice: Invoice) -> Subscription | None:
    if invoice.subscription_id is None:
        return None
    return await ctx.session.get(Subscription, invoice.subscription_id, with_for_update={"key_share": True})


async def invoice_created(ctx: EventContext, obj: StripeInvoice) -> str:
    """Mirror the draft, and report the subscription's usage before Stripe finalises it.

    At a period's close the usage job's period-close pass has usually settled the period already
    (every window recorded and sent): the settlement comes with the subscription row the handler
    loads, and gives the period's calls. Otherwise the usage job runs for this subscription now."""
    invoice = await _mirror_invoice(ctx, obj, ctx.created)
    if obj.status == "draft" and invoice.subscription_id is not None:
        subscription, calls = await UsageRepository(ctx.session).draft_subscription(
            invoice.subscription_id, invoice.period_start, invoice.period_end
        )
        if calls is None:
            run = await ctx.usage.aggregate(only=[invoice.subscription_id])
            if run.unavailable or run.stripe_failures:
                raise UsageNotReported("usage not yet reported for this invoice (metering or Stripe failed)")
        # Only a subscription without the overage meter item (made before it) gets an overage line.
        await bill_overage(ctx.session, ctx.stripe, invoice, subscription, calls=calls)
    return "processed"


async def invoice_finalized(ctx: EventContext, obj: StripeInvoice) -> str:
    await _mirror_invoice(ctx, obj, ctx.created)
    return "processed"


async def invoice_paid(ctx: EventContext, obj: StripeInvoice) -> str:
    """Mirror, book the creator's earnings once, and end any dunning."""
    invoice = await _mirror_invoice(ctx, obj, ctx.created)
    await book_invoice_earnings(ctx.session, invoice, ctx.settings.platform_commission)
    subscription = await _invoice_subscription(ctx, invoice)
    if subscription is not None:
        await ctx.dunning.payment_succeeded(subscription, observed_at=ctx.created)
        await ctx.outbox.publish_event(
            subscription, INVOICE_PAID, invoice.stripe_invoice_id, invoice_payload(invoice)
        )
    return "processed"


async def invoice_payment_failed(ctx: EventContext, obj: StripeInvoice) -> str:
    """Mirror, and enter dunning unless the invoice has been paid meanwhile."""
    invoice = await _mirror_invoice(ctx, obj, ctx.created)
    subscription = await _invoice_subscription(ctx, invoice)
    if subscription is not None and invoice.status != "paid":
        await ctx.dunning.payment_failed(subscription, observed_at=ctx.created)
        await ctx.outbox.publish_event(
            subscription, INVOICE_PAYMENT_FAILED, ctx.event_id, invoice_payload(invoice)
        )
    return "processed"


async def checkout_completed(ctx: EventContext, obj: StripeCheckoutCompleted) -> str:
    """Link the Stripe subscription the checkout created and mirror its current state."""
    stripe_subscription_id = obj.subscription
    if not stripe_subscription_id:
        return "ignored"
    metadata = dict(obj.metadata)
    if obj.client_reference_id:
        metadata.setdefault("subscription_id", obj.client_reference_id)
    subscription = await find_subscription(
        ctx.session,
        checkout_session_id=obj.id,
        stripe_subscription_id=stripe_subscription_id,
        metadata=metadata,
    )
    if subscription is None:
        raise NotYetKnown(f"no subscription of ours for checkout session {obj.id}")
    await adopt_stripe_subscription(subscription, stripe_subscription_id)
    # The session does not carry the subscription's state: fetch it, as of Stripe's answer.
    state = await ctx.stripe.retrieve_subscription(stripe_subscription_id)
    await apply_stripe_state(ctx.outbox, subscription, state, observed_at=max(state.as_of or 0, ctx.created))
    return "processed"


async def payment_intent_settled(ctx: EventContext, obj: StripePaymentIntent) -> str:
    """payment_intent.succeeded / payment_failed: refresh the invoice it was paying, if any.

    Dunning and earnings follow the invoice events; this keeps the invoice mirror current when
    those arrive late. Payment intents of no invoice (since API 2025-03-31 the link lives on
    InvoicePayment) concern nothing we mirror.
    """
    invoice_id = obj.invoice
    if invoice_id is None:
        return "ignored"
    fetched = await ctx.stripe.retrieve_invoice(invoice_id)
    invoice = await sync_invoice(
        ctx.session,
        fetched,
        observed_at=max(fetched.as_of or 0, ctx.created),
        issuer=ctx.settings.invoice_issuer_name,
    )
    if invoice is None:
        return "ignored"
    await book_invoice_earnings(ctx.session, invoice, ctx.settings.platform_commission)
    return "processed"
