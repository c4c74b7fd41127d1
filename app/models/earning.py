from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import MinorUnits, enum_check, non_negative

# A charge earns; a reversal (refund, dispute) takes back; a reinstatement gives back what a
# reversal took (a won dispute, a failed refund); a credit takes back what an invoice's net credit
# lines (proration of unused time) return to the consumer. Reversals and credits count negative
# everywhere.
EARNING_KINDS = ("charge", "reversal", "reinstatement", "credit")
NEGATIVE_KINDS = ("reversal", "credit")
NEGATIVE_KINDS_SQL = "(" + ", ".join(f"'{kind}'" for kind in NEGATIVE_KINDS) + ")"
EARNING_STATUSES = ("pending", "available", "paid_out", "reversed")
REVERSAL_SOURCES = ("refund", "dispute")


class Earning(UUIDPk, Base):
    """A line of a creator's ledger: what one paid invoice earned them, after commission."""

    __tablename__ = "earnings"
    __table_args__ = (
        # One charge line per (invoice, plan); reversals and reinstatements are appended, any number.
        Index(
            "uq_earnings_charge_invoice_plan",
            "invoice_id",
            "plan_id",
            unique=True,
            postgresql_where=text("kind = 'charge'"),
        ),
        # One credit line per (invoice, plan), so a repeated booking adds none.
        Index(
            "uq_earnings_credit_invoice_plan",
            "invoice_id",
            "plan_id",
            unique=True,
            postgresql_where=text("kind = 'credit'"),
        ),
        Index("ix_earnings_invoice_id", "invoice_id"),
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
    # The refund or dispute (or the invoice) whose change booked a reversal or reinstatement line.
    reference: Mapped[str | None] = mapped_column(String(255))
    earned_at: Mapped[datetime] = mapped_column(default=clock.now)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class InvoiceReversal(UUIDPk, Timestamps, Base):
    """What one refund or dispute takes back from a paid invoice, as Stripe last showed it.

    One row per Stripe refund or dispute, kept at its newest state (by the event's time, ties by
    how far along its life it is); the invoice's reversed total is the sum of `amount`.
    """

    __tablename__ = "invoice_reversals"
    __table_args__ = (
        enum_check("source", REVERSAL_SOURCES),
        *non_negative("amount"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id"), index=True)
    stripe_object_id: Mapped[str] = mapped_column(String(255), unique=True)  # re_... or dp_...
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    amount: Mapped[MinorUnits]  # taken back now: 0 once a refund failed or a dispute was won
    stripe_state_at: Mapped[int] = mapped_column(BigInteger)
    state_rank: Mapped[int]
