"""Exactly-once per period for periodic jobs, by a unique row in `job_runs`.

A job claims (job, subject, period) in the same transaction that records its effect. A second
worker racing for the same claim blocks on the unique index until the first commits, then gets
False; if the first rolls back (it failed), the second gets True and does the work instead.
"""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobRun


async def claim_period(session: AsyncSession, job: str, subject: str, period: str) -> bool:
    """True if this transaction now owns (job, subject, period); False if it was already done."""
    statement = (
        insert(JobRun)
        .values(id=uuid.uuid4(), job=job, subject=subject, period=period)
        .on_conflict_do_nothing(index_elements=[JobRun.job, JobRun.subject, JobRun.period])
        .returning(JobRun.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None
