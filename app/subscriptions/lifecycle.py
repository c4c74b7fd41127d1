"""How a subscription follows Stripe's state, shared by the subscription service, webhooks and sync.

One function applies a Stripe subscription snapshot to our row (dj-stripe style), so the API,
the webhook handlers and `billing sync` can never disagree. It is idempotent and safe out of
order: an older snapshot never overwrites a newer one, and a terminal status is never left.
Key issuance follows status: entering a live status issues the API key (once), ending revokes it.

Three rules that timestamps alone cannot settle:
- A terminal Stripe state (canceled, incomplete_expired) of the row's own Stripe subscription is
  applied whatever its time: Stripe never revives it, and a replayed answer of Stripe's is
  stamped only as new as its own timestamps show.
- A snapshot without `trial_end` never erases a known one: Stripe keeps a trial's end on the
  subscription once set, so only a stale or partial snapshot lacks it.
- The plan follows the price Stripe bills: a strictly newer snapshot whose price belongs to
  another plan version of the same API moves the row to it (a portal or dashboard change, or a
  plan change whose commit was lost); a price no plan of the API has is flagged in
  `unmatched_stripe_price_id`, logged and counted, and the row keeps its plan.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession, async_object_session

from app import clock, metrics
from app.events.types import SUBSCRIPTION_CANCELLED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_CREATED
from app.invoices.repository import link_to_subscription
from app.models import PricingPlan, PricingPlanVersion, Subscription
from app.models.subscription import KEYED, STRIPE_STATUS, TERMINAL
from app.outbox.service import Outbox
from app.stripe.subscriptions import StripeSubscriptionState

log = logging.getLogger(__name__)


async def apply_status(outbox: Outbox, subscription: Subscription, new_status: str) -> bool:
    """Move to `new_status` and issue or revoke the key to match.

    Never out of a terminal status, and never back to `incomplete`: Stripe only starts there, so
    an `incomplete` snapshot after any other status is a stale one that shares its second.
    """
    old_status = subscription.status
    if old_status == new_status or old_status in TERMINAL:
        return False
    if new_status == "incomplete":
        return False
    subscription.status = new_status
    now = clock.now()
    if new_status in KEYED and old_status not in KEYED:
        await outbox.create_api_key(subscription)
        await outbox.publish_event(subscription, SUBSCRIPTION_CREATED, str(subscription.id))
    if old_status == "past_due" and new_status in KEYED:
        # Leaving dunning brings back a key it suspended (a no-op if no suspension was asked).
        await outbox.restore_api_key(subscription)
    if new_status == "past_due" and subscription.past_due_since is None:
        subscription.past_due_since = now
    if new_status != "past_due":
        subscription.past_due_since = None
    if new_status in TERMINAL:
        subscription.cancelled_at = subscription.cancelled_at or now
        await outbox.revoke_api_key(subscription)
        await outbox.publish_event(subscription, SUBSCRIPTION_CANCELLED, str(subscription.id))
    elif old_status in KEYED:
        await outbox.publish_event(subscription, SUBSCRIPTION_CHANGED, f"{subscription.id}:{uuid.uuid4()}")
    outbox.refresh_entitlement(subscription)
    return True


async def adopt_stripe_subscription(subscription: Subscription, stripe_subscription_id: str) -> None:
    """Make a row that follows no Stripe subscription yet follow this one, and link to it what was
    mirrored of that subscription before (invoices whose events came before our commit, as when
    a subscribe is retried after a crash, and their earnings lines). A no-op on a row that follows one.
    """
    if subscription.stripe_subscription_id is not None:
        return
    subscription.stripe_subscription_id = stripe_subscription_id
    session = async_object_session(subscription)
    if session is not None:
        await link_to_subscription(session, subscription.id, subscription.consumer_id, stripe_subscription_id)


async def follow_price(subscription: Subscription, price_id: str | None) -> bool:
    """Put the row on the plan version whose Stripe price is `price_id`, or flag the price when no
    plan of the subscription's API has it; True if anything changed.

    Needs the row's session to look the price up: a row outside any session is left as it is.
    """
    session = async_object_session(subscription)
    if session is None or price_id is None:
        return False
    found = await _plan_of_price(session, subscription, price_id)
    if found is None:
        if await _is_overage_price(session, subscription, price_id):
            return False  # an overage price is never the plan's: nothing to follow or flag
        if subscription.unmatched_stripe_price_id == price_id:
            return False
        subscription.unmatched_stripe_price_id = price_id
        metrics.SUBSCRIPTION_PRICE_UNMATCHED.inc()
        log.warning(
            "Stripe bills a price no plan of this API has; the subscription keeps its plan",
            extra={"subscription_id": str(subscription.id), "stripe_price_id": price_id},
        )
        return True
    changed = subscription.unmatched_stripe_price_id is not None
    subscription.unmatched_stripe_price_id = None
    plan_id, version, _type = found
    if (plan_id, version) != (subscription.pricing_plan_id, subscription.plan_version):
        log.info(
            "plan follows the price Stripe bills",
            extra={
                "subscription_id": str(subscription.id),
                "stripe_price_id": price_id,
                "from_plan": f"{subscription.pricing_plan_id} v{subscription.plan_version}",
                "to_plan": f"{plan_id} v{version}",
            },
        )
        subscription.pricing_plan_id = plan_id
        subscription.plan_version = version
        changed = True
    return changed


def follows_price_of(subscription: Subscription, state: StripeSubscriptionState, *, observed_at: int) -> bool:
    """True when `apply_stripe_state` would put the row on the plan of this snapshot's price: a
    strictly newer, non-terminal snapshot of the row's own Stripe subscription, the row still live."""
    if subscription.stripe_subscription_id not in (None, state.id) or subscription.status in TERMINAL:
        return False
    if STRIPE_STATUS.get(state.status, subscription.status) in TERMINAL:
        return False
    last = subscription.stripe_state_at
    return last is None or observed_at > last


async def moves_plan(subscription: Subscription, price_id: str | None) -> bool:
    """True when `price_id` is not the Stripe price of the row's own plan version: following it
    would move the row to another plan (or flag the price)."""
    session = async_object_session(subscription)
    if session is None or price_id is None:
        return False
    own = await session.scalar(
        select(PricingPlanVersion.stripe_price_id).where(
            PricingPlanVersion.plan_id == subscription.pricing_plan_id,
            PricingPlanVersion.version == subscription.plan_version,
        )
    )
    return own != price_id


async def bills_calls_differently(subscription: Subscription, price_id: str | None) -> bool:
    """True when `price_id` is the price of another plan of the row's API and exactly one of that
    plan and the row's own bills per call, or either bills overage through the meter (the overage
    item is added, swapped or deleted): the calls until the change must be counted first."""
    session = async_object_session(subscription)
    if session is None or price_id is None:
        return False
    target = await _plan_of_price(session, subscription, price_id)
    if target is None:
        return False
    plan_id, version, plan_type = target
    if plan_id == subscription.pricing_plan_id:
        return False
    if subscription.stripe_overage_item_id is not None:
        return True
    target_overage = await session.scalar(
        select(PricingPlanVersion.stripe_overage_price_id).where(
            PricingPlanVersion.plan_id == plan_id, PricingPlanVersion.version == version
        )
    )
    if target_overage is not None:
        return True
    current = await session.scalar(
        select(PricingPlan.type).where(PricingPlan.id == subscription.pricing_plan_id)
    )
    return (current == "pay_per_use") != (plan_type == "pay_per_use")


async def _plan_of_price(
    session: AsyncSession, subscription: Subscription, price_id: str
) -> Row[uuid.UUID, int, str] | None:
    """The plan version (plan id, version, plan type) of the row's API whose Stripe price is
    `price_id`, or None when no plan of that API has it."""
    return (
        await session.execute(
            select(PricingPlanVersion.plan_id, PricingPlanVersion.version, PricingPlan.type)
            .join(PricingPlan, PricingPlan.id == PricingPlanVersion.plan_id)
            .where(PricingPlanVersion.stripe_price_id == price_id, PricingPlan.api_id == subscription.api_id)
        )
    ).one_or_none()


async def _is_overage_price(session: AsyncSession, subscription: Subscription, price_id: str) -> bool:
    """Whether `price_id` is the metered overage price of a plan version of the row's API."""
    found = await session.scalar(
        select(PricingPlanVersion.id)
        .join(PricingPlan, PricingPlan.id == PricingPlanVersion.plan_id)
        .where(
            PricingPlanVersion.stripe_overage_price_id == price_id,
            PricingPlan.api_id == subscription.api_id,
        )
    )
    return found is not None


async def apply_stripe_state(
    outbox: Outbox, subscription: Subscription, state: StripeSubscriptionState, *, observed_at: int
) -> bool:
    """Mirror a Stripe snapshot observed at `observed_at` (unix seconds); True if anything changed.

    A snapshot older than the last one applied is ignored, so events can arrive in any order;
    a terminal one is applied whatever its time (see the module's rules).
    """
    if subscription.stripe_subscription_id not in (None, state.id):
        return False  # another Stripe subscription than the row's own (e.g. one a downgrade ended)
    if subscription.status in TERMINAL:
        return False
    status = STRIPE_STATUS.get(state.status, subscription.status)
    last = subscription.stripe_state_at
    if last is not None and observed_at < last and status not in TERMINAL:
        return False
    follows_price = follows_price_of(subscription, state, observed_at=observed_at)
    before = (
        subscription.status,
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.cancel_at_period_end,
        subscription.trial_end,
    )
    subscription.stripe_state_at = max(observed_at, last or observed_at)
    await adopt_stripe_subscription(subscription, state.id)
    subscription.stripe_subscription_item_id = state.item_id or subscription.stripe_subscription_item_id
    # The overage item follows Stripe's newest snapshot (a plan change adds or removes it); a
    # same-second one may predate our change, so it only ever adds the item it names.
    if follows_price:
        subscription.stripe_overage_item_id = state.overage_item_id
    else:
        subscription.stripe_overage_item_id = state.overage_item_id or subscription.stripe_overage_item_id
    subscription.current_period_start = state.current_period_start or subscription.current_period_start
    subscription.current_period_end = state.current_period_end or subscription.current_period_end
    subscription.cancel_at_period_end = state.cancel_at_period_end
    subscription.trial_end = state.trial_end or subscription.trial_end
    if state.cancel_at_period_end and state.current_period_end:
        subscription.expires_at = state.current_period_end
    if status in TERMINAL:
        subscription.cancelled_at = state.canceled_at or state.ended_at or subscription.cancelled_at
        subscription.expires_at = state.ended_at or subscription.expires_at
    # A same-second snapshot may predate a plan change we just made: only a newer one moves the plan.
    plan_changed = follows_price and await follow_price(subscription, state.price_id)
    await apply_status(outbox, subscription, status)
    outbox.refresh_entitlement(subscription)
    after = (
        subscription.status,
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.cancel_at_period_end,
        subscription.trial_end,
    )
    return before != after or plan_changed
