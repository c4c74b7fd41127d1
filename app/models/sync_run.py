from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk
from app.models.types import enum_check

SYNC_STATUSES = ("running", "interrupted", "completed", "failed")


class SyncRun(UUIDPk, Base):
    """One `billing sync` pass: where it got to (to resume) and what differed from Stripe."""

    __tablename__ = "sync_runs"
    __table_args__ = (enum_check("status", SYNC_STATUSES),)

    status: Mapped[str] = mapped_column(String(16), default="running")
    dry_run: Mapped[bool] = mapped_column(default=False)
    # Per Stripe list: the last object id done, so an interrupted run resumes after it.
    cursor: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Per list: counts of seen / changed / unknown objects, and the differences found (capped).
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=clock.now)
    finished_at: Mapped[datetime | None]
