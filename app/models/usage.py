from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base
from app.models.types import enum_check, non_negative

# How a window stands with Stripe: `unbilled` (not sent: a flat plan, or no calls), `pending`
# (to send, or sent with no answer yet), `accepted` (Stripe took its meter event: never sent
# again), `quarantined` (refused, or its outcome unknown for too long: sent again only on an
# operator's retry).
REPORT_STATUSES = ("unbilled", "pending", "accepted", "quarantined")


class UsageRecord(Base):
    """Calls of one subscription in one window, as counted by the metering service."""

    __tablename__ = "usage_records"
    __table_args__ = (
        # Covering: a period's sums read the index only (migration 0010).
        UniqueConstraint(
            "subscription_id",
            "window_start",
            name="uq_usage_records_subscription_window",
            postgresql_include=["window_end", "quantity", "successful_calls", "failed_calls"],
        ),
        CheckConstraint("window_end > window_start", name="window_ordered"),
        *non_negative("quantity", "successful_calls", "failed_calls"),
        enum_check("report_status", REPORT_STATUSES),
        # The windows still to send: claiming a subscription's reads these, not its whole history.
        Index(
            "ix_usage_records_unsent",
            "subscription_id",
            "window_start",
            postgresql_where=text("meter_event_identifier IS NOT NULL AND reported_at IS NULL"),
        ),
    )

    # Time-ordered, given by the database (migration 0016): new windows go to the right edge of
    # the primary key's index, not to random pages of it.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("uuidv7()"))
    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    successful_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    # Deterministic per subscription and window, so Stripe drops a repeated meter event.
    meter_event_identifier: Mapped[str | None] = mapped_column(String(255), unique=True)
    report_status: Mapped[str] = mapped_column(String(16), default="unbilled", server_default="unbilled")
    # Part of the Stripe idempotency key; an operator's retry of a quarantined window bumps it.
    report_attempt: Mapped[int] = mapped_column(default=0, server_default="0")
    # First send of the current attempt (Stripe replays its answer to a resend for 24 h), and
    # the latest one (a run leaves a window another run is sending alone for a while).
    report_first_sent_at: Mapped[datetime | None]
    report_last_sent_at: Mapped[datetime | None]
    report_error: Mapped[str | None] = mapped_column(Text)
    quarantined_at: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class UsagePeriodSettlement(Base):
    """A subscription's billing period whose usage is settled: every window billed in it was
    recorded and none was left to send when the usage job's period-close pass checked, with the
    period's calls. Recording or re-queueing a window billed in it (or earlier) deletes the row."""

    __tablename__ = "usage_period_settlements"
    __table_args__ = (CheckConstraint("period_end > period_start", name="period_ordered"),)

    # No foreign key: checking one locks each settled subscription's row, which costs the
    # period-close pass as much as summing the period (subscriptions are never deleted).
    subscription_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    period_end: Mapped[datetime] = mapped_column(primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    # Where the subscription's windows stopped when it was settled: a draft checks again whether
    # they cover the period, for a subscription that has since come to end with its period.
    covered_through: Mapped[datetime]
    settled_at: Mapped[datetime] = mapped_column(default=clock.now)


class UsageDay(Base):
    """A subscription's windows summed per UTC day (the day of each window's start): what the
    creator's usage report reads, so its cost follows the days asked for, not the windows.

    Kept by triggers on `usage_records` (migration 0014) for every insert, update, delete and
    truncate whoever runs it, in the same transaction; a day whose windows are all gone is
    removed. No foreign key of its own: it follows `usage_records` (whose rows go with their
    subscription), so a key check per upserted day would only repeat that one."""

    __tablename__ = "usage_days"

    subscription_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    windows: Mapped[int]
    calls: Mapped[int] = mapped_column(BigInteger)
    successful_calls: Mapped[int] = mapped_column(BigInteger)
    failed_calls: Mapped[int] = mapped_column(BigInteger)
