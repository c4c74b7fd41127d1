from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk
from app.models.types import non_negative


class UsageRecord(UUIDPk, Base):
    """Calls of one subscription in one window, as counted by the metering service."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("subscription_id", "window_start", name="uq_usage_records_subscription_window"),
        CheckConstraint("window_end > window_start", name="window_ordered"),
        *non_negative("quantity", "successful_calls", "failed_calls"),
    )

    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    quantity: Mapped[int] = mapped_column(default=0)
    successful_calls: Mapped[int] = mapped_column(default=0)
    failed_calls: Mapped[int] = mapped_column(default=0)
    # Deterministic per subscription and window, so Stripe drops a repeated meter event.
    meter_event_identifier: Mapped[str | None] = mapped_column(String(255), unique=True)
    reported_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
