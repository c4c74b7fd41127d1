from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.analytics.repository import AnalyticsRepository, api_earnings
from app.analytics.schemas import (
    TopConsumer,
    UsageCounts,
    UsageDay,
    UsagePlan,
    UsageReport,
)
from app.auth import Principal
from app.config import Settings
from app.errors import Forbidden, InvalidField, NotFound
from app.models import Api

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_CONSUMERS = 10
# GROUPING(month, plan) of the earnings query's sets: a bit for each column left out.
TOTAL, BY_FIRST, BY_SECOND = 3, 1, 2
# GROUPING(day, plan, consumer) of the usage query's sets (), (day), (plan) and (consumer).
USAGE_TOTAL, USAGE_DAY, USAGE_PLAN, USAGE_CONSUMER = 7, 3, 5, 6


def date_range(date_from: date | None, date_to: date | None, today: date) -> tuple[date, date]:
    """Inclusive UTC days; the last 30 days by default; at most 366 days; `from` not after `to`."""
    end = date_to or (date_from + timedelta(days=DEFAULT_DAYS - 1) if date_from else today)
    if date_to is None and date_from is not None:
        end = min(end, max(today, date_from))
    start = date_from or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidField("from", "must not be after `to`")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidField("to", f"the range is at most {MAX_DAYS} days")
    return start, end


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return datetime.combine(start, wall_time.min, tzinfo=UTC), datetime.combine(
        end + timedelta(days=1), wall_time.min, tzinfo=UTC
    )


class AnalyticsService:
    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self._repo = AnalyticsRepository(session)
        self._settings = settings

    async def usage(
        self, principal: Principal, api_id: str, date_from: date | None, date_to: date | None
    ) -> UsageReport:
        """Calls of an API by day and by plan, with its top consumers (ids only)."""
        start, end = date_range(date_from, date_to, clock.today())
        await self._owned_api(principal, api_id)
        lower, upper = _bounds(start, end)
        rows = await self._repo.usage(api_id, lower, upper, TOP_CONSUMERS)

        totals = UsageCounts(calls=0, successful_calls=0, failed_calls=0, unique_consumers=0)
        days: dict[date, UsageDay] = {}
        plans: list[UsagePlan] = []
        top: list[TopConsumer] = []
        for row in rows:
            counts = {
                "calls": row.calls,
                "successful_calls": row.successful_calls,
                "failed_calls": row.failed_calls,
                "unique_consumers": row.unique_consumers,
            }
            if row.grouping_id == USAGE_TOTAL:
                totals = UsageCounts(**counts)
            elif row.grouping_id == USAGE_DAY and row.day is not None:
                days[row.day] = UsageDay(date=row.day, **counts)
            elif row.grouping_id == USAGE_PLAN and row.plan_id is not None:
                plans.append(UsagePlan(plan_id=row.plan_id, plan_name=row.plan_name, **counts))
            elif row.grouping_id == USAGE_CONSUMER and row.consumer_id is not None:
                top.append(TopConsumer(consumer_id=row.consumer_id, calls=row.calls))
        # Every day of the range, so charts need no gap filling (at most 366 entries).
        daily = [
            days.get(day)
            or UsageDay(date=day, calls=0, successful_calls=0, failed_calls=0, unique_consumers=0)
            for day in (start + timedelta(days=i) for i in range((end - start).days + 1))
        ]
        plans.sort(key=lambda p: (-p.calls, str(p.plan_id)))
        return UsageReport(
            api_id=api_id,
            from_=start,
            to=end,
            totals=totals,
            daily=daily,
            plans=plans,
            top_consumers=top,
        )

    async def _owned_api(self, principal: Principal, api_id: str) -> Api:
        api = await self._repo.get_api(api_id)
        if api is None:
            raise NotFound("API not found")
        _check_owner(principal, api.creator_id)
        return api


class EarningsReader:
    """The earnings report on a pooled read connection (no session, no ORM: its hot path)."""

    def __init__(self, connection: Any, settings: Settings) -> None:
        self._connection = connection
        self._settings = settings

    async def report(
        self, principal: Principal, api_id: str, date_from: date | None, date_to: date | None
    ) -> bytes:
        """Gross, commission and net per currency (never summed across currencies), by month and
        plan: the contract's EarningsReport as JSON, written straight from the query's rows (the
        bytes `EarningsReport` would write; a test compares them)."""
        start, end = date_range(date_from, date_to, clock.today())
        found = await api_earnings(
            self._connection, api_id, *_bounds(start, end), caller=principal.user_id, admin=principal.is_admin
        )
        if found is None:
            raise NotFound("API not found")
        _check_owner(principal, found.creator_id)
        months: dict[str, list[dict[str, Any]]] = defaultdict(list)
        plans: dict[str, list[dict[str, Any]]] = defaultdict(list)
        totals: dict[str, Mapping[str, Any]] = {}
        for row in found.rows:
            amounts = {
                "gross_amount": row["gross_amount"],
                "commission_amount": row["commission_amount"],
                "net_amount": row["net_amount"],
            }
            grouping, currency = row["grouping_id"], row["currency"]
            if grouping == TOTAL:
                totals[currency] = row
            elif grouping == BY_FIRST and row["month"] is not None:
                months[currency].append({**amounts, "month": row["month"]})
            elif grouping == BY_SECOND and row["plan_id"] is not None:
                plans[currency].append({**amounts, "plan_id": row["plan_id"], "plan_name": row["plan_name"]})
        currencies = [
            {
                "gross_amount": total["gross_amount"],
                "commission_amount": total["commission_amount"],
                "net_amount": total["net_amount"],
                "currency": currency,
                "pending_amount": total["pending_amount"],
                "available_amount": total["available_amount"],
                "paid_out_amount": total["paid_out_amount"],
                "months": sorted(months[currency], key=lambda m: str(m["month"])),
                "plans": sorted(plans[currency], key=lambda p: (-p["gross_amount"], p["plan_id"])),
            }
            for currency, total in sorted(totals.items())
        ]
        report = {
            "api_id": api_id,
            "from": start,
            "to": end,
            "commission_rate": str(self._settings.platform_commission),
            "currencies": currencies,
        }
        return orjson.dumps(report)


def _check_owner(principal: Principal, creator_id: str) -> None:
    """Only the API's creator, or an admin, sees its analytics."""
    if not (principal.is_admin or creator_id == principal.user_id):
        raise Forbidden("Only the API's creator sees its analytics", code="not_api_owner")
