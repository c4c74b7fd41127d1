"""The rules of usage windows, in one place: where a window starts and ends, what its meter
event is called and stamped with, and which billing period it belongs to.

A window is a stretch of one UTC day (the metering service counts per day). It is a whole day,
or ends early at an instant where billing changes: a plan change, a cancellation, the end of
the last period. The next window of that day starts there, and its count is the day's count
minus what the day's earlier windows hold, so the windows of a day add up to the day's count,
each call in exactly one window, each window recorded once. Windows end on whole seconds, and
a window's meter event is stamped one second before its end (its last second); Stripe bills it
in the period that contains that second, and so do the usage, estimate and quota we show
(the period queries say `window_end - interval '1 second'`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    Label,
    SQLColumnExpression,
    Text,
    and_,
    case,
    func,
    literal_column,
    or_,
)
from sqlalchemy.sql.base import ReadOnlyColumnCollection

DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
# A window's meter event carries its last second; SQL writes it `window_end - METER_STAMP_OFFSET`.
METER_STAMP_OFFSET = _SECOND
_TICK = timedelta(microseconds=1)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def meter_event_identifier(subscription_id: uuid.UUID, window_start: datetime) -> str:
    """Deterministic per subscription and window: the day for a window starting at midnight,
    the day and time for one starting where an earlier window of its day ended."""
    start = window_start.astimezone(UTC)
    if start == day_start(start.date()):
        return f"usage:{subscription_id}:{start:%Y%m%d}"
    return f"usage:{subscription_id}:{start:%Y%m%dT%H%M%S%f}"


def window_boundary(at: datetime) -> datetime:
    """Where a window ending at `at` ends: the whole second (Stripe stamps in seconds)."""
    return at.astimezone(UTC).replace(microsecond=0)


def event_instant(window_end: datetime) -> datetime:
    """The instant a window's meter event carries: its last second."""
    return window_end - METER_STAMP_OFFSET


def in_period(event_at: datetime, start: datetime, end: datetime) -> bool:
    return start <= event_at < end


def period_days(start: datetime, end: datetime) -> tuple[date, date]:
    """The first and last UTC day whose whole-day window is billed in [start, end)."""
    first = start.astimezone(UTC).date()
    if not in_period(event_instant(day_start(first + DAY)), start, end):
        first += DAY
    last = (end + _SECOND - _TICK).astimezone(UTC).date() - DAY
    return first, last


# A window's meter event instant in SQL, written on `window_end` (not an index column, so no
# expression needs computing per row of an index range); windows lie within one UTC day.
_SQL_STAMP_OFFSET = literal_column(f"interval '{METER_STAMP_OFFSET.total_seconds():g} seconds'", Interval())
_SQL_DAY = literal_column("interval '1 day'", Interval())
_SQL_DAY_UNIT = literal_column("'day'", Text())
_SQL_UTC = literal_column("'UTC'", Text())
# An instant in SQL: a column (nullable or not) or a bound value.
_Instant = SQLColumnExpression[datetime] | SQLColumnExpression[datetime | None]


@dataclass(frozen=True)
class WindowBounds:
    """What a period bounds the windows billed in it by, in SQL: their start lies in
    [`start_from`, `start_before`) and their end in [`end_from`, `end_before`). A query over many
    periods computes these once per period (rather than once per window it reads)."""

    start_from: _Instant
    start_before: _Instant
    end_from: _Instant
    end_before: _Instant

    def labelled(self) -> list[Label[datetime]]:
        """The four bounds as columns of a derived table, named after the fields."""
        return [
            self.start_from.label("start_from"),
            self.start_before.label("start_before"),
            self.end_from.label("end_from"),
            self.end_before.label("end_before"),
        ]

    @classmethod
    def of(cls, columns: ReadOnlyColumnCollection[str, Any]) -> WindowBounds:
        """The bounds a derived table holds (as `labelled` names them)."""
        return cls(columns.start_from, columns.start_before, columns.end_from, columns.end_before)

    def hold(self, window_start: _Instant, window_end: _Instant) -> ColumnElement[bool]:
        """In SQL: the window lies within the bounds, so it is billed in their period."""
        return and_(
            window_start >= self.start_from,
            window_start < self.start_before,
            window_end >= self.end_from,
            window_end < self.end_before,
        )


def window_bounds(start: _Instant, end: _Instant) -> WindowBounds:
    """The bounds of the windows billed in [start, end): their meter event instant (their last
    second, `window_end - METER_STAMP_OFFSET`) falls in the period, as Stripe bills it, and so,
    since a window lies within one day, they start from the start of `start`'s day and before
    `end` (the bounds that narrow an index range on (subscription, window start) to the
    period)."""
    return WindowBounds(earliest_start(start), end, start + _SQL_STAMP_OFFSET, end + _SQL_STAMP_OFFSET)


def stamped_in(
    window_end: _Instant,
    start: _Instant,
    end: _Instant,
) -> ColumnElement[bool]:
    """In SQL: the window's meter event instant (its last second) falls in [start, end), so the
    window is billed in that period, as Stripe bills it."""
    bounds = window_bounds(start, end)
    return and_(window_end >= bounds.end_from, window_end < bounds.end_before)


def earliest_start(start: _Instant) -> ColumnElement[datetime] | ColumnElement[datetime | None]:
    """In SQL: where the first window billed in a period starting at `start` may start: at the
    start of that UTC day. Its last second (its meter event's instant) is in the period, so on
    that day or later, and a window starts on the day of its last second."""
    return func.date_trunc(_SQL_DAY_UNIT, start, _SQL_UTC)


def billed_in(
    window_start: _Instant,
    window_end: _Instant,
    start: _Instant,
    end: _Instant,
) -> ColumnElement[bool]:
    """In SQL: the window is billed in [start, end) (`window_bounds`)."""
    return window_bounds(start, end).hold(window_start, window_end)


def billed_before(
    window_start: _Instant,
    window_end: _Instant,
    end: _Instant,
) -> ColumnElement[bool]:
    """In SQL: the window is billed before `end` (in the period ending there or an earlier one),
    with the bound that implies on its start."""
    return and_(window_start < end, window_end < end + _SQL_STAMP_OFFSET)


def may_end_early(
    status: SQLColumnExpression[str], cancel_at_period_end: SQLColumnExpression[bool]
) -> ColumnElement[bool]:
    """Whether a subscription's windows may stop before its period's end (see `covers_period`),
    in SQL: it is cancelled, or cancels at its period's end."""
    return or_(status == "cancelled", cancel_at_period_end)


def covers_period(
    last_window_end: _Instant,
    end: _Instant,
    *,
    may_end_early: SQLColumnExpression[bool],
) -> ColumnElement[bool]:
    """Whether windows recorded up to `last_window_end` (a subscription's windows follow one
    another from its first) hold every window billed before `end`, in SQL: the next window would
    be billed at `end` or later. It ends at the next midnight (UTC), or, for a subscription that
    may end early (cancelled, or cancelling at its period's end), possibly at the next second.
    The period close settles with it and a renewal draft checks a settlement with it."""
    next_stamp = func.date_trunc(_SQL_DAY_UNIT, last_window_end, _SQL_UTC) + _SQL_DAY - _SQL_STAMP_OFFSET
    return and_(
        last_window_end.is_not(None),
        case((may_end_early, last_window_end >= end), else_=next_stamp >= end),
    )
