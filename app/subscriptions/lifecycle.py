"""How a subscription follows Stripe's state, shared by the subscription service, webhooks and sync.

One function applies a Stripe subscription snapshot to our row (dj-stripe style), so the API,
the webhook handlers and `billing sync` can never disagree. It is idempotent and safe out of
order: an older snapshot never overwrites a newer one, and a terminal status is never left.
Key issuance follows status: entering a live status issues the API key (once), ending revokes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import clock
from app.events.types import SUBSCRIPTION_CANCELLED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_CREATED
from app.models import Subscription
from app.outbox.service import Outbox

# Stripe subscription status -> ours (CONTRACT.md's enum).
STRIPE_STATUS = {
    "active": "active",
    "trialing": "trial",
    "past_due": "past_due",
    "unpaid": "past_due",
    "paused": "past_due",
    "incomplete": "incomplete",
    "incomplete_expired": "incomplete_expired",
    "canceled": "cancelled",
}
TERMINAL = frozenset({"cancelled", "incomplete_expired"})
KEYED = frozenset({"active", "trial", "past_due"})


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


@dataclass(frozen=True, slots=True)
class StripeSubscriptionState:
    """The parts of a Stripe Subscription object that we mirror."""

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

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeSubscriptionState:
        """From Stripe's JSON (an API answer or an event's `data.object`).

        Since API version 2025-03-31 the period lives on the subscription item; older versions
        (and the emulator) keep it on the subscription, so both are read.
        """
        items = (obj.get("items") or {}).get("data") or []
        item = items[0] if items else {}
        price = item.get("price") or item.get("plan") or {}
        customer = obj.get("customer")
        return cls(
            id=obj["id"],
            status=obj["status"],
            customer=customer if isinstance(customer, str) else (customer or {}).get("id"),
            current_period_start=_ts(item.get("current_period_start") or obj.get("current_period_start")),
            current_period_end=_ts(item.get("current_period_end") or obj.get("current_period_end")),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
            canceled_at=_ts(obj.get("canceled_at")),
            ended_at=_ts(obj.get("ended_at")),
            trial_end=_ts(obj.get("trial_end")),
            item_id=item.get("id"),
            price_id=price.get("id") if isinstance(price, dict) else price,
            metadata=dict(obj.get("metadata") or {}),
        )


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


async def apply_stripe_state(
    outbox: Outbox, subscription: Subscription, state: StripeSubscriptionState, *, observed_at: int
) -> bool:
    """Mirror a Stripe snapshot observed at `observed_at` (unix seconds); True if anything changed.

    A snapshot older than the last one applied is ignored, so events can arrive in any order.
    """
    if subscription.stripe_state_at is not None and observed_at < subscription.stripe_state_at:
        return False
    if subscription.status in TERMINAL:
        return False
    before = (
        subscription.status,
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.cancel_at_period_end,
        subscription.trial_end,
    )
    subscription.stripe_state_at = observed_at
    subscription.stripe_subscription_id = subscription.stripe_subscription_id or state.id
    subscription.stripe_subscription_item_id = state.item_id or subscription.stripe_subscription_item_id
    subscription.current_period_start = state.current_period_start or subscription.current_period_start
    subscription.current_period_end = state.current_period_end or subscription.current_period_end
    subscription.cancel_at_period_end = state.cancel_at_period_end
    subscription.trial_end = state.trial_end
    if state.cancel_at_period_end and state.current_period_end:
        subscription.expires_at = state.current_period_end
    status = STRIPE_STATUS.get(state.status, subscription.status)
    if status in TERMINAL:
        subscription.cancelled_at = state.canceled_at or state.ended_at or subscription.cancelled_at
        subscription.expires_at = state.ended_at or subscription.expires_at
    await apply_status(outbox, subscription, status)
    outbox.refresh_entitlement(subscription)
    after = (
        subscription.status,
        subscription.current_period_start,
        subscription.current_period_end,
        subscription.cancel_at_period_end,
        subscription.trial_end,
    )
    return before != after
