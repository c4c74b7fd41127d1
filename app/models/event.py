from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base
from app.models.types import enum_check

EVENT_STATUSES = ("pending", "processing", "processed", "failed", "ignored")


class StripeEvent(Base):
    """Every webhook event Stripe sent us, stored before it is answered."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        enum_check("status", EVENT_STATUSES),
        Index("ix_stripe_events_status_received", "status", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's evt_... id
    type: Mapped[str] = mapped_column(String(128))
    api_version: Mapped[str | None] = mapped_column(String(64))
    stripe_created: Mapped[int] = mapped_column(BigInteger)
    livemode: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=clock.now)
    processed_at: Mapped[datetime | None]
