"""Overage: calls past a plan's included calls, billed once on the period's invoice.

A subscription on a plan version with overage carries the version's metered overage price as a
second item (`Subscription.stripe_overage_item_id`): the usage job reports all its calls to the
API's meter, and Stripe bills them through the price's graduated tiers (the included calls at 0)
on the renewal invoice, beside the plan's line. Nothing is added here for those.

Subscriptions made before overage was billed through the meter have no such item; for them (and
only them) the calls past `call_limit` are added to the renewal draft as one invoice line at the
plan's overage price, when Stripe drafts it. The line is claimed once per (subscription, period)
in `job_runs` and sent under an idempotency key derived from them, so a repeated or retried event
never bills twice. A plan change adds the item, moving such a subscription to the meter.

A plan change mid-period of such a subscription first bills the overage so far, on the plan it
was made on, as a pending invoice item of the subscription (the change's invoice carries it):
otherwise the line at the period's close would price it by the plan then, or (after a move to a
plan with the meter item) never bill it. Stripe's own record of those items is the mark of what
is billed: the close line, and a later change, bill only the calls past the included ones that
they do not hold. So each such call is billed once across any number of changes, a change whose
Stripe call failed after its item was made (the item stays, and is counted), and redeliveries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.db.claims import claim_period
from app.models import Consumer, Invoice, PricingPlanVersion, Subscription
from app.money import minor_decimal
from app.stripe import StripeGateway
from app.subscriptions.schemas import PreviewLine
from app.usage.repository import UsageRepository

OVERAGE_JOB = "overage_invoice_line"
BILLED_AT_CHANGE = "overage_before_change"  # the `kind` in the metadata of a change's overage item


async def _billed_at_changes(
    stripe: StripeGateway, customer: str, subscription: Subscription, start: datetime
) -> int:
    """The period's overage calls billed so far, as Stripe holds their items: those of plan
    changes and the period's close line alike (both kinds), so neither bills the other's again."""
    return await stripe.invoice_item_quantities(
        customer=customer,
        metadata={"subscription_id": str(subscription.id), "period_start": start.isoformat()},
        created_since=start,  # items of older periods cannot match: the listing need not page through them
    )


async def bill_overage_before_change(
    session: AsyncSession, stripe: StripeGateway, subscription: Subscription, customer: str, *, change: str
) -> int:
    """Bill the overage a subscription without the overage item has run up in its period so far,
    on the plan it is on, as a pending invoice item of the subscription, before a plan change
    (whose invoice carries it); returns the calls billed now. Calls that an earlier change of the
    period billed are not billed again; `change` names this change of this subscription (its
    retries send the same).
    The period's recorded calls must be counted until now before."""
    if subscription.stripe_overage_item_id is not None or subscription.stripe_subscription_id is None:
        return 0
    start, end = subscription.current_period_start, subscription.current_period_end
    version = await _version_held(session, subscription)
    if start is None or end is None or version is None:
        return 0
    if end <= clock.now():
        return 0  # the period has ended: its close line bills its overage
    if version.overage_price_per_call is None or version.call_limit is None:
        return 0
    recorded = await UsageRepository(session).period_calls([(subscription.id, start, end)])
    over = recorded.get(subscription.id, 0) - version.call_limit
    if over <= 0:
        return 0
    billed = await _billed_at_changes(stripe, customer, subscription, start)
    calls = over - billed
    if calls <= 0:
        return 0
    await _add_overage_item(
        stripe,
        customer,
        subscription,
        version,
        start,
        calls,
        description=f"Overage until a plan change: {calls} calls past the {version.call_limit} included",
        kind=BILLED_AT_CHANGE,
        # What is billed already is part of the key: a retry after more calls bills only those.
        idempotency_key=f"overage-change:{change}:{int(start.timestamp())}:{billed}",
    )
    return calls


async def _add_overage_item(
    stripe: StripeGateway,
    customer: str,
    subscription: Subscription,
    version: PricingPlanVersion,
    start: datetime,
    calls: int,
    *,
    description: str,
    kind: str,
    idempotency_key: str,
    invoice: str | None = None,
) -> None:
    """`calls` at the version's overage price: a line on the draft `invoice`, or (None) a
    pending item of the subscription, which Stripe puts on its next invoice."""
    assert version.overage_price_per_call is not None  # noqa: S101  (the callers checked it)
    await stripe.add_invoice_item(
        customer=customer,
        invoice=invoice,
        subscription=None if invoice is not None else subscription.stripe_subscription_id,
        currency=version.currency,
        description=description,
        quantity=calls,
        unit_amount_decimal=minor_decimal(version.overage_price_per_call, version.currency),
        metadata={"subscription_id": str(subscription.id), "period_start": start.isoformat(), "kind": kind},
        idempotency_key=idempotency_key,
    )


async def _version_held(session: AsyncSession, subscription: Subscription) -> PricingPlanVersion | None:
    statement = select(PricingPlanVersion).where(
        PricingPlanVersion.plan_id == subscription.pricing_plan_id,
        PricingPlanVersion.version == subscription.plan_version,
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def bill_overage(
    session: AsyncSession,
    stripe: StripeGateway,
    invoice: Invoice,
    subscription: Subscription | None,
    *,
    calls: int | None = None,
) -> int:
    """Add the period's overage to the draft invoice of a subscription without the overage item;
    returns the calls billed (0: none, done, or billed by the meter item).
    `calls`: the period's recorded calls when the caller has read them, else read here."""
    if subscription is None or invoice.status != "draft":
        return 0
    if subscription.stripe_overage_item_id is not None:
        return 0  # the meter item bills the overage: an invoice line would bill it twice
    start, end = invoice.period_start, invoice.period_end
    if start is None or end is None or start >= end:
        return 0
    version = await _version_held(session, subscription)
    if version is None or version.overage_price_per_call is None or version.call_limit is None:
        return 0
    if calls is None:
        recorded = await UsageRepository(session).period_calls([(subscription.id, start, end)])
        calls = recorded.get(subscription.id, 0)
    over = calls - version.call_limit
    if over <= 0:
        return 0
    if not await claim_period(session, OVERAGE_JOB, str(subscription.id), start.isoformat()):
        return 0
    consumer = await session.get(Consumer, subscription.consumer_id)
    if consumer is None or consumer.stripe_customer_id is None:
        return 0
    # A plan change holds the row so (FOR NO KEY UPDATE) while it bills: one of the two waits, and
    # then sees what the other billed. The draft handler's row is locked so already; taken here
    # too, so that the rule holds for whatever loaded the row.
    await session.execute(
        select(Subscription.id).where(Subscription.id == subscription.id).with_for_update(key_share=True)
    )
    over -= await _billed_at_changes(stripe, consumer.stripe_customer_id, subscription, start)
    if over <= 0:
        return 0
    await _add_overage_item(
        stripe,
        consumer.stripe_customer_id,
        subscription,
        version,
        start,
        over,
        description=f"Overage: {over} calls past the {version.call_limit} included",
        kind="overage",
        idempotency_key=f"overage:{subscription.id}:{int(start.timestamp())}",
        invoice=invoice.stripe_invoice_id,
    )
    return over


def overage_terms(version: PricingPlanVersion) -> list[PreviewLine]:
    """The line an upgrade preview adds for a plan with overage: its terms, billed later (0 now)."""
    if version.overage_price_per_call is None or version.call_limit is None:
        return []
    price = format(version.overage_price_per_call.normalize(), "f")
    return [
        PreviewLine(
            description=(
                f"Past {version.call_limit:,} included calls a period: {price} {version.currency.upper()} "
                "per call, billed through the API's meter on the period's invoice"
            ),
            amount=0,
            currency=version.currency,
            proration=False,
            period_start=None,
            period_end=None,
        )
    ]
