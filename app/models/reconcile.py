from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk
from app.models.types import enum_check, non_negative

RECONCILE_STATUSES = ("running", "interrupted", "completed")
RECONCILE_CHECKS = ("invoices", "earnings", "usage", "orphans")


class ReconcileRun(UUIDPk, Base):
    """One `billing reconcile` pass over Stripe: where it got to (to resume) and what it checked."""

    __tablename__ = "reconcile_runs"
    __table_args__ = (enum_check("status", RECONCILE_STATUSES),)

    status: Mapped[str] = mapped_column(String(16), default="running")
    # Only invoices (and usage periods) from this instant on; None: everything.
    since: Mapped[datetime | None]
    # The day a daily worker run is for (YYYY-MM-DD); None for runs started by hand.
    period: Mapped[str | None] = mapped_column(String(16), unique=True)
    # Per step: the last Stripe object id (or our row id) done, or "done".
    cursor: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Per check: how many objects were compared.
    checked: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=clock.now)
    finished_at: Mapped[datetime | None]


class ReconcileDrift(UUIDPk, Base):
    """One difference a run found between our store and Stripe (a line of the report)."""

    __tablename__ = "reconcile_drifts"
    __table_args__ = (
        # A page redone after a crash finds the same differences: one line each.
        UniqueConstraint("run_id", "check_name", "subject", name="uq_reconcile_drifts_run_check_subject"),
        enum_check("check_name", RECONCILE_CHECKS),
        *non_negative("drift_cents"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("reconcile_runs.id", ondelete="CASCADE"))
    check_name: Mapped[str] = mapped_column(String(16))
    # What differs: a Stripe object id, or a subscription and period.
    subject: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str | None] = mapped_column(String(3))
    ours: Mapped[int | None] = mapped_column(BigInteger)
    stripe: Mapped[int | None] = mapped_column(BigInteger)
    # The money the difference is worth, in the currency's minor units (0 when none is known).
    drift_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class ReconcileSeen(Base):
    """A Stripe object a run has listed, so it can tell which of our rows Stripe no longer has."""

    __tablename__ = "reconcile_seen"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("reconcile_runs.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), primary_key=True)
