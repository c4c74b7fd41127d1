from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, Timestamps, UUIDPk


class Consumer(UUIDPk, Timestamps, Base):
    __tablename__ = "consumers"

    user_id: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    # Null only between our insert and Stripe's answer, inside one transaction.
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)


class PaymentMethod(UUIDPk, Base):
    """Our mirror of a consumer's cards at Stripe."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        Index(
            "uq_payment_methods_one_default",
            "consumer_id",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    consumer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consumers.id", ondelete="CASCADE"), index=True)
    stripe_payment_method_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(32), default="card")
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None]
    exp_year: Mapped[int | None]
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
