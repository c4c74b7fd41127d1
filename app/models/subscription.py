from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, ForeignKeyConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import enum_check

SUBSCRIPTION_STATUSES = ("active", "cancelled", "past_due", "trial", "incomplete", "incomplete_expired")
# Statuses that hold the consumer's one place on an API.
LIVE_STATUSES = ("active", "past_due", "trial", "incomplete")


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
    )

    consumer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consumers.id"))
    api_id: Mapped[str] = mapped_column(ForeignKey("apis.api_id"), index=True)
    pricing_plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_pricing_plans.id"), index=True)
    plan_version: Mapped[int]
    status: Mapped[str] = mapped_column(String(24))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2048))
    api_key_id: Mapped[str | None] = mapped_column(String(255))
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
