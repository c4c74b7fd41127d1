from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk
from app.models.types import enum_check

# The calls to the API key service: the delivery job knows these, its sweeper re-enqueues only these.
API_KEY_KINDS = ("create_api_key", "revoke_api_key", "suspend_api_key", "restore_api_key")
OUTBOX_KINDS = (*API_KEY_KINDS, "notify")
OUTBOX_STATUSES = ("pending", "done", "failed")


class OutboxMessage(UUIDPk, Base):
    """A call to a sibling service, written in the transaction that makes it necessary."""

    __tablename__ = "outbox"
    __table_args__ = (
        enum_check("kind", OUTBOX_KINDS),
        enum_check("status", OUTBOX_STATUSES),
        Index("ix_outbox_status_next_attempt", "status", "next_attempt_at"),
    )

    kind: Mapped[str] = mapped_column(String(32))
    # Unique per intent (e.g. "create_api_key:<subscription id>"), so an intent is never doubled.
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=clock.now)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    processed_at: Mapped[datetime | None]
