"""How a resumable run (`billing sync`, `billing reconcile`) ends: completed, or interrupted so that
the next run resumes it where it stopped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

from app import clock


class ResumableRun(Protocol):
    status: str
    finished_at: datetime | None


@contextmanager
def settling(run: ResumableRun) -> Iterator[None]:
    """Mark `run` completed when the block finishes, or interrupted when anything stops it
    (an error, a cancellation, Ctrl-C); the caller saves it either way."""
    try:
        yield
    except BaseException:
        run.status = "interrupted"
        raise
    run.status = "completed"
    run.finished_at = clock.now()
