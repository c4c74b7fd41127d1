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
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.claims import claim_period
from app.models import Consumer, Invoice, PricingPlanVersion, Subscription
from app.money import minor_decimal
from app.stripe import StripeGateway
from app.subscriptions.schemas import PreviewLine
from app.usage.repository import UsageRepository

OVERAGE_JOB = "overage_invoice_line"


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
    version = (
        await session.execute(
            select(PricingPlanVersion).where(
                PricingPlanVersion.plan_id == subscription.pricing_plan_id,
                PricingPlanVersion.version == subscription.plan_version,
            )
        )
    ).scalar_one_or_none()
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
    await stripe.add_invoice_item(
        customer=consumer.stripe_customer_id,
        invoice=invoice.stripe_invoice_id,
        currency=version.currency,
        description=f"Overage: {over} calls past the {version.call_limit} included",
        quantity=over,
        unit_amount_decimal=minor_decimal(version.overage_price_per_call, version.currency),
        metadata={
            "subscription_id": str(subscription.id),
            "period_start": start.isoformat(),
            "kind": "overage",
        },
        idempotency_key=f"overage:{subscription.id}:{int(start.timestamp())}",
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
