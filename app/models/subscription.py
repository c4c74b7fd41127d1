from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, ForeignKeyConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import enum_check


class SubscriptionStatus(StrEnum):
    """Our subscription statuses (the HTTP contract's enum); the sets below are the rules' words."""

    ACTIVE = "active"
    CANCELLED = "cancelled"
    PAST_DUE = "past_due"
    TRIAL = "trial"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"


_S = SubscriptionStatus
SUBSCRIPTION_STATUSES = tuple(status.value for status in SubscriptionStatus)
# Statuses that hold the consumer's one place on an API.
LIVE_STATUSES = tuple(s.value for s in (_S.ACTIVE, _S.PAST_DUE, _S.TRIAL, _S.INCOMPLETE))
# Final: Stripe never revives a subscription that ended, so neither do we.
TERMINAL = frozenset(s.value for s in (_S.CANCELLED, _S.INCOMPLETE_EXPIRED))
# Statuses whose consumer holds an API key.
KEYED = frozenset(s.value for s in (_S.ACTIVE, _S.TRIAL, _S.PAST_DUE))
# Where a subscription's API key stands (the HTTP contract's `api_key_status`).
ApiKeyStatus = Literal["issuing", "issued", "suspended", "revoked", "none"]


def api_key_status_of(api_key_id: str | None, status: str, *, suspended: bool) -> ApiKeyStatus:
    """Where a subscription's API key stands; a live one without a key is still being issued."""
    if api_key_id is not None and status in TERMINAL:
        return "revoked"
    if suspended:
        return "suspended"
    if api_key_id is not None:
        return "issued"
    return "issuing" if status in KEYED else "none"


# Stripe subscription status -> ours.
STRIPE_STATUS = {
    "active": _S.ACTIVE.value,
    "trialing": _S.TRIAL.value,
    "past_due": _S.PAST_DUE.value,
    "unpaid": _S.PAST_DUE.value,
    "paused": _S.PAST_DUE.value,
    "incomplete": _S.INCOMPLETE.value,
    "incomplete_expired": _S.INCOMPLETE_EXPIRED.value,
    "canceled": _S.CANCELLED.value,
}


class Subscription(UUIDPk, Timestamps, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        enum_check("status", SUBSCRIPTION_STATUSES),
        ForeignKeyConstraint(
            ["pricing_plan_id", "plan_version"],
            ["api_pricing_plan_versions.plan_id", "api_pricing_plan_versions.version"],
            name="fk_subscriptions_plan_version",
        ),
        Index(
            "uq_subscriptions_one_live_per_api",
            "consumer_id",
            "api_id",
            unique=True,
            postgresql_where=text("status IN ('active', 'past_due', 'trial', 'incomplete')"),
        ),
        Index("ix_subscriptions_consumer_created", "consumer_id", "created_at", "id"),
        CheckConstraint("monthly_spend_cap >= 0", name="monthly_spend_cap_non_negative"),
    )

    consumer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consumers.id"))
    api_id: Mapped[str] = mapped_column(ForeignKey("apis.api_id"), index=True)
    pricing_plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_pricing_plans.id"), index=True)
    plan_version: Mapped[int]
    status: Mapped[str] = mapped_column(String(24))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    # The item of the plan version's metered overage price (None: no overage, or a subscription
    # made before overage was billed through the meter, whose overage is an invoice line).
    stripe_overage_item_id: Mapped[str | None] = mapped_column(String(255))
    # A digest of the Idempotency-Key of the subscribe that made it (`request_key_digest`): its
    # retry, after a commit whose answer was lost, answers this row instead of 409.
    request_key_digest: Mapped[str | None] = mapped_column(String(64))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2048))
    api_key_id: Mapped[str | None] = mapped_column(String(255), index=True)
    api_key_suspended: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime] = mapped_column(default=clock.now)
    cancelled_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    trial_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    past_due_since: Mapped[datetime | None]
    # Creation time of the newest Stripe event applied, so an older one never moves state back.
    stripe_state_at: Mapped[int | None] = mapped_column(BigInteger)
    # The Stripe price billed when no plan version of this API has it (the row keeps its plan).
    unmatched_stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    # The consumer's monthly spend cap on pay-per-use and overage, in the plan's minor units.
    monthly_spend_cap: Mapped[int | None] = mapped_column(BigInteger)
