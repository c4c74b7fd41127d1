from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import enum_check

CUSTOM_INVOICE_STATES = ("pending", "sent")


class CustomInvoice(UUIDPk, Timestamps, Base):
    """An admin's one-off invoice as requested, committed before Stripe hears of it.

    Its id is the invoice's id (in `invoices` once sent, and in the Stripe invoice's metadata);
    every Stripe call's idempotency key derives from it, so a retry finishes the same invoice.
    """

    __tablename__ = "custom_invoices"
    __table_args__ = (enum_check("state", CUSTOM_INVOICE_STATES),)

    consumer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consumers.id"), index=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    description: Mapped[str | None] = mapped_column(String(500))
    days_until_due: Mapped[int]
    # The requested lines: description, quantity, unit_amount (integer minor units).
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # Recorded as soon as Stripe has made the draft, before anything is finalised or sent.
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    last_error: Mapped[str | None] = mapped_column(Text)
