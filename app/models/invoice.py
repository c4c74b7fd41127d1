from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import MinorUnits, enum_check, non_negative

INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")


class Invoice(UUIDPk, Timestamps, Base):
    """Our mirror of a Stripe invoice."""

    __tablename__ = "invoices"
    __table_args__ = (
        enum_check("status", INVOICE_STATUSES),
        # Stripe never asks or takes a negative amount, but a credit (proration) invoice has a
        # negative subtotal, tax and total: those are stored as Stripe reports them.
        *non_negative("amount_paid", "amount_due"),
        Index("ix_invoices_consumer_created", "consumer_id", "created_at", "id"),
    )

    stripe_invoice_id: Mapped[str] = mapped_column(String(255), unique=True)
    consumer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consumers.id"))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    number: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    amount_due: Mapped[MinorUnits] = mapped_column(default=0)
    amount_paid: Mapped[MinorUnits] = mapped_column(default=0)
    subtotal: Mapped[MinorUnits] = mapped_column(default=0)
    tax: Mapped[MinorUnits] = mapped_column(default=0)
    total: Mapped[MinorUnits] = mapped_column(default=0)
    # The customer's invoice balance before and after this invoice (negative: a credit), as Stripe
    # reports them; null until Stripe finalises the invoice.
    starting_balance: Mapped[int | None] = mapped_column(BigInteger)
    ending_balance: Mapped[int | None] = mapped_column(BigInteger)
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    invoice_pdf: Mapped[str | None] = mapped_column(String(2048))
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(2048))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    stripe_state_at: Mapped[int | None] = mapped_column(BigInteger)
