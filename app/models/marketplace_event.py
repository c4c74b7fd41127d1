from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk
from app.models.types import enum_check

MARKETPLACE_EVENT_STATUSES = ("pending", "delivered", "failed")


class MarketplaceEvent(UUIDPk, Base):
    """An event for the marketplace, written in the transaction that makes it true, then delivered
    as a signed webhook (in order per subscription)."""

    __tablename__ = "marketplace_events"
    __table_args__ = (
        enum_check("status", MARKETPLACE_EVENT_STATUSES),
        Index("ix_marketplace_events_status_next_attempt", "status", "next_attempt_at"),
        Index("ix_marketplace_events_subscription_seq", "subscription_id", "seq"),
    )

    # Order of writing; delivery per subscription follows it.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    # Unique per fact (e.g. "usage.threshold:<subscription>:<period>:80"): an event exists once.
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # A replay starts a new round: every endpoint gets the event again.
    round: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=clock.now)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    delivered_at: Mapped[datetime | None]


class MarketplaceEventDelivery(UUIDPk, Base):
    """One delivery attempt of an event to one endpoint: the delivery log."""

    __tablename__ = "marketplace_event_deliveries"

    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("marketplace_events.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(2048))
    attempt: Mapped[int]
    round: Mapped[int] = mapped_column(default=0)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]
    attempted_at: Mapped[datetime] = mapped_column(default=clock.now)
