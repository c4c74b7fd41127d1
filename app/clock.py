"""Business time: the one clock every period, usage day, dunning grace, payout and cron reads.

Production runs on the system clock. Tests and simulations swap in a `ManualClock`, either for a
block of code (`use`) or for the whole process at start-up (`install`), so a billing year can pass
in seconds. Elapsed-time measurements (timeouts, rate limits, latency metrics) are not business
time and keep using `time.monotonic` / `time.perf_counter`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: tests, simulations and frozen replays."""

    def __init__(self, start: datetime) -> None:
        self._now = _aware(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = _aware(when)

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("a clock's time must be timezone-aware")
    return when.astimezone(UTC)


class _ProcessClock:
    """The clock of this process, chosen once at start-up by the entry point."""

    clock: Clock = SystemClock()


_override: ContextVar[Clock | None] = ContextVar("billing_clock", default=None)


def current() -> Clock:
    return _override.get() or _ProcessClock.clock


def now() -> datetime:
    return current().now()


def today() -> date:
    """Today's UTC date: usage days and daily jobs are UTC days."""
    return now().date()


def timestamp() -> int:
    """Now as Unix seconds, the unit Stripe stamps its objects with."""
    return int(now().timestamp())


def install(clock: Clock) -> None:
    """Make `clock` the clock of the whole process (entry points only, at start-up)."""
    _ProcessClock.clock = clock


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Run a block (and the tasks it starts) on `clock`."""
    token = _override.set(clock)
    try:
        yield clock
    finally:
        _override.reset(token)
