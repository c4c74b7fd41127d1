"""Billing periods: calendar-month arithmetic and the period whose usage counts now.

Pure functions of their arguments (the caller passes `clock.now()`), used by subscriptions,
usage and entitlements alike.
"""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def monthly_window(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The monthly period, counted from `anchor`, that contains `now`."""
    months = max((now.year - anchor.year) * 12 + now.month - anchor.month, 0)
    start = add_months(anchor, months)
    if start > now and months > 0:
        months -= 1
        start = add_months(anchor, months)
    return start, add_months(anchor, months + 1)


def usage_period(
    current_start: datetime | None, current_end: datetime | None, started_at: datetime, now: datetime
) -> tuple[datetime, datetime]:
    """The period whose usage counts now: Stripe's current period, or else a monthly one."""
    if current_start is None or current_end is None or not current_start <= now < current_end:
        return monthly_window(current_start or started_at, now)
    return current_start, current_end
