from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UUIDPk, utcnow
from app.models.types import MinorUnits, enum_check, non_negative

EARNING_KINDS = ("charge", "reversal")
EARNING_STATUSES = ("pending", "available", "paid_out", "reversed")


class Earning(UUIDPk, Base):
    """A line of a creator's ledger: what one paid invoice earned them, after commission."""

    __tablename__ = "earnings"
    __table_args__ = (
        UniqueConstraint("invoice_id", "plan_id", "kind", name="uq_earnings_invoice_plan_kind"),
        enum_check("kind", EARNING_KINDS),
        enum_check("status", EARNING_STATUSES),
        *non_negative("gross_amount", "commission_amount", "net_amount"),
        Index("ix_earnings_api_earned", "api_id", "earned_at"),
        # The payout run's two scans touch only lines still due: maturing ones and unclaimed ones.
        Index("ix_earnings_pending_earned", "earned_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_earnings_unclaimed_available",
            "creator_id",
            "currency",
            postgresql_where=text("status = 'available' AND payout_id IS NULL"),
        ),
    )

    creator_id: Mapped[str] = mapped_column(String(255), index=True)
    api_id: Mapped[str] = mapped_column(ForeignKey("apis.api_id"))
    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_pricing_plans.id"))
    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id"))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"))
    kind: Mapped[str] = mapped_column(String(16), default="charge")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    currency: Mapped[str] = mapped_column(String(3))
    gross_amount: Mapped[MinorUnits]
    commission_amount: Mapped[MinorUnits]
    net_amount: Mapped[MinorUnits]
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(255))
    # The payout that claimed this line (set before the transfer, so a retry pays the same lines).
    payout_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("payouts.id"), index=True)
    earned_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
