"""Dunning: what a failed payment does to a subscription, and how it ends.

invoice.payment_failed -> `past_due` (since then); after the grace period the key's suspension
is asked of the outbox; when Stripe's retries end (subscription deleted or `unpaid`) the
subscription is cancelled and its key revoked; a paid invoice at any point restores `active`
and the key. Invoice events are observations of the subscription at their `created` time, so
they never undo a newer subscription snapshot (and an older snapshot never undoes them).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import OutboxMessage, Subscription
from app.models.subscription import TERMINAL
from app.outbox.service import Outbox
from app.stripe import StripeGateway
from app.subscriptions.lifecycle import apply_status


def _is_older(subscription: Subscription, observed_at: int) -> bool:
    return subscription.stripe_state_at is not None and observed_at < subscription.stripe_state_at


class DunningService:
    def __init__(self, session: AsyncSession, outbox: Outbox) -> None:
        self._session = session
        self._outbox = outbox

    async def payment_failed(self, subscription: Subscription, *, observed_at: int) -> bool:
        """Enter dunning: an active (or trialing) subscription becomes `past_due`."""
        if subscription.status not in ("active", "trial") or _is_older(subscription, observed_at):
            return False
        subscription.stripe_state_at = observed_at
        return await apply_status(self._outbox, subscription, "past_due")

    async def payment_succeeded(self, subscription: Subscription, *, observed_at: int) -> bool:
        """Leave dunning: a `past_due` subscription is active again (a suspended key is restored)."""
        if subscription.status != "past_due" or _is_older(subscription, observed_at):
            return False
        subscription.stripe_state_at = observed_at
        return await apply_status(self._outbox, subscription, "active")

    async def retries_ended(
        self, subscription: Subscription, stripe: StripeGateway, *, observed_at: int
    ) -> bool:
        """Stripe gave up collecting (`unpaid`): cancel there and here, and revoke the key."""
        if _is_older(subscription, observed_at) or subscription.status in TERMINAL:
            return False
        if subscription.stripe_subscription_id is not None:
            await stripe.cancel_unpaid_subscription(
                subscription.stripe_subscription_id, idempotency_key=f"sub-cancel-unpaid:{subscription.id}"
            )
        subscription.stripe_state_at = observed_at
        return await apply_status(self._outbox, subscription, "cancelled")

    async def suspend_overdue(self, *, now: datetime, grace: timedelta, limit: int = 200) -> int:
        """Ask to suspend the keys of subscriptions past due for longer than `grace`; returns how many.

        Once per spell of `past_due`: a subscription whose suspension was asked since it became
        past due is skipped. Rows are claimed with SKIP LOCKED, so two workers never ask twice.
        (The outbox delivery sets `api_key_suspended` once the key service has acted.)
        """
        asked = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.subscription_id == Subscription.id,
                OutboxMessage.kind == "suspend_api_key",
                OutboxMessage.created_at >= Subscription.past_due_since,
            )
            .exists()
        )
        statement = (
            select(Subscription)
            .where(
                Subscription.status == "past_due",
                Subscription.past_due_since <= now - grace,
                ~asked,
            )
            .order_by(Subscription.past_due_since)
            .limit(limit)
            .with_for_update(skip_locked=True, key_share=True)
        )
        overdue = (await self._session.execute(statement)).scalars().all()
        for subscription in overdue:
            await self._outbox.suspend_api_key(subscription)
        return len(overdue)
