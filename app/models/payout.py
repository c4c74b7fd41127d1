from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import MinorUnits, enum_check

PAYOUT_STATUSES = ("pending", "paid")


class CreatorAccount(Timestamps, Base):
    """A creator's Stripe Connect (Express) account, mirrored from Stripe."""

    __tablename__ = "creator_accounts"

    creator_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    stripe_account_id: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    details_submitted: Mapped[bool] = mapped_column(default=False)
    charges_enabled: Mapped[bool] = mapped_column(default=False)
    payouts_enabled: Mapped[bool] = mapped_column(default=False)


class Payout(UUIDPk, Base):
    """One transfer of a creator's available net earnings in one currency, once per period."""

    __tablename__ = "payouts"
    __table_args__ = (
        UniqueConstraint("creator_id", "currency", "period", name="uq_payouts_creator_currency_period"),
        enum_check("status", PAYOUT_STATUSES),
        Index("ix_payouts_status_created", "status", "created_at"),
    )

    creator_id: Mapped[str] = mapped_column(String(255), index=True)
    stripe_account_id: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(16))  # the payout day, YYYY-MM-DD (UTC)
    amount: Mapped[MinorUnits] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    paid_at: Mapped[datetime | None]
