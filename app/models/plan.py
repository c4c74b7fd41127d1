from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app import clock
from app.db.base import Base, Timestamps, UUIDPk
from app.models.types import PER_CALL_PRICE, Json, MinorUnits, enum_check, non_negative

PLAN_TYPES = ("free", "subscription", "pay_per_use")


class Api(Base):
    """A marketplace API, claimed by the first creator who adds a plan to it."""

    __tablename__ = "apis"

    api_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    creator_id: Mapped[str] = mapped_column(String(255), index=True)
    stripe_product_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # One Billing Meter per API: a consumer has at most one live subscription per API.
    stripe_meter_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class PricingPlan(UUIDPk, Timestamps, Base):
    """A plan's identity and the terms that do not touch money; prices live in its versions."""

    __tablename__ = "api_pricing_plans"
    __table_args__ = (
        enum_check("type", PLAN_TYPES),
        CheckConstraint("rate_limit_per_minute > 0", name="rate_limit_per_minute_positive"),
        CheckConstraint("rate_limit_per_day > 0", name="rate_limit_per_day_positive"),
        CheckConstraint("rate_limit_per_month > 0", name="rate_limit_per_month_positive"),
        CheckConstraint("trial_period_days >= 0", name="trial_period_days_non_negative"),
        CheckConstraint("current_version >= 1", name="current_version_positive"),
    )

    api_id: Mapped[str] = mapped_column(ForeignKey("apis.api_id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    type: Mapped[str] = mapped_column(String(16))
    rate_limit_per_minute: Mapped[int | None]
    rate_limit_per_day: Mapped[int | None]
    rate_limit_per_month: Mapped[int | None]
    trial_period_days: Mapped[int | None]
    features: Mapped[Json] = mapped_column(default=dict)
    is_active: Mapped[bool] = mapped_column(default=True)
    current_version: Mapped[int] = mapped_column(Integer, default=1)

    versions: Mapped[list[PricingPlanVersion]] = relationship(
        back_populates="plan", order_by="PricingPlanVersion.version", lazy="raise"
    )


class PricingPlanVersion(UUIDPk, Base):
    """The money terms of one version of a plan; subscribers keep the version they bought."""

    __tablename__ = "api_pricing_plan_versions"
    __table_args__ = (
        UniqueConstraint("plan_id", "version", name="uq_api_pricing_plan_versions_plan_version"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("call_limit > 0", name="call_limit_positive"),
        CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency_iso"),
        *non_negative("monthly_amount", "price_per_call"),
        CheckConstraint("overage_price_per_call > 0", name="overage_price_per_call_positive"),
    )

    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_pricing_plans.id", ondelete="CASCADE"))
    version: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # Monthly price in minor units; per-call price in major units with 8 decimals (may be < 1 cent).
    monthly_amount: Mapped[MinorUnits | None]
    price_per_call: Mapped[Decimal | None] = mapped_column(PER_CALL_PRICE)
    call_limit: Mapped[int | None]
    # Set: calls past `call_limit` are allowed and billed at this per-call price (major units).
    overage_price_per_call: Mapped[Decimal | None] = mapped_column(PER_CALL_PRICE)
    stripe_price_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # With overage: the graduated metered price on the API's meter (`call_limit` calls at 0, then
    # `overage_price_per_call`), the subscription's second item.
    stripe_overage_price_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    plan: Mapped[PricingPlan] = relationship(back_populates="versions", lazy="raise")

    def money_terms(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "monthly_amount": self.monthly_amount,
            "price_per_call": self.price_per_call,
            "call_limit": self.call_limit,
            "overage_price_per_call": self.overage_price_per_call,
        }
