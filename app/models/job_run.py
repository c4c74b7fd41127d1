from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app import clock
from app.db.base import Base, UUIDPk


class JobRun(UUIDPk, Base):
    """One periodic job's claim on one subject for one period: the row exists at most once."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "subject", "period", name="uq_job_runs_job_subject_period"),)

    job: Mapped[str] = mapped_column(String(64))
    # What the job acts on, e.g. a subscription or invoice id.
    subject: Mapped[str] = mapped_column(String(255))
    # The period's stable name, e.g. "2026-11" or "2026-11-25T10:00/2026-11-25T10:05".
    period: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(default=clock.now)
