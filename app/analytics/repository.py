"""The analytics queries: each answer is one GROUP BY in PostgreSQL, never rows in Python."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Api
from app.models.earning import NEGATIVE_KINDS_SQL

# One statement over the API's daily sums (`usage_days`, one row per subscription and UTC day,
# kept from the windows by triggers): the total, each day, each plan and each consumer (GROUPING
# SETS), of which only the top consumers leave the database. `start` and `end` are midnights (UTC),
# so the days from the one of `start` up to the one of `end` hold exactly the windows starting
# in [start, end).
USAGE_SQL = text(
    """
    SELECT grouping_id, day, plan_id, plan.name AS plan_name, consumer_id, calls, successful_calls,
           failed_calls, unique_consumers
    FROM (
        SELECT GROUPING(per.day, s.pricing_plan_id, s.consumer_id) AS grouping_id,
               per.day,
               s.pricing_plan_id AS plan_id,
               s.consumer_id,
               COALESCE(SUM(per.calls), 0)::bigint AS calls,
               COALESCE(SUM(per.successful_calls), 0)::bigint AS successful_calls,
               COALESCE(SUM(per.failed_calls), 0)::bigint AS failed_calls,
               COUNT(DISTINCT s.consumer_id) AS unique_consumers,
               row_number() OVER (
                   PARTITION BY GROUPING(per.day, s.pricing_plan_id, s.consumer_id)
                   ORDER BY SUM(per.calls) DESC, s.consumer_id
               ) AS position
        FROM (
            SELECT d.day, d.subscription_id, d.calls, d.successful_calls, d.failed_calls
            FROM usage_days d
            WHERE d.subscription_id IN (SELECT id FROM subscriptions WHERE api_id = :api_id)
              AND d.day >= (CAST(:start AS timestamptz) AT TIME ZONE 'UTC')::date
              AND d.day < (CAST(:end AS timestamptz) AT TIME ZONE 'UTC')::date
        ) per
        JOIN subscriptions s ON s.id = per.subscription_id
        GROUP BY GROUPING SETS ((), (per.day), (s.pricing_plan_id), (s.consumer_id))
    ) ranked
    LEFT JOIN api_pricing_plans plan ON plan.id = ranked.plan_id
    WHERE grouping_id <> 6 OR position <= :limit
    ORDER BY grouping_id, position
    """
)

# Reversal and credit lines count negative. One round trip: the API's owner (no row: no such API)
# and, only when the caller may see them ($4 the caller's user id, $5 whether they are an admin),
# its earnings in one pass: per currency, per (currency, month), per (currency, plan). The owner
# check inside is a constant filter, so nobody else's request scans a single earnings row; the
# service decides 403 from the owner returned.
EARNINGS_SQL = f"""
    SELECT owner.creator_id, totals.grouping_id, totals.currency, totals.month, totals.plan_id::text,
           plan.name AS plan_name, totals.gross_amount, totals.commission_amount, totals.net_amount,
           totals.pending_amount, totals.available_amount, totals.paid_out_amount
    FROM apis owner
    LEFT JOIN LATERAL (
        SELECT GROUPING(month, e.plan_id) AS grouping_id,
               e.currency,
               month,
               e.plan_id,
               SUM(sign * e.gross_amount)::bigint AS gross_amount,
               SUM(sign * e.commission_amount)::bigint AS commission_amount,
               SUM(sign * e.net_amount)::bigint AS net_amount,
               COALESCE(SUM(sign * e.net_amount) FILTER (WHERE e.status = 'pending'), 0)::bigint
                   AS pending_amount,
               COALESCE(SUM(sign * e.net_amount) FILTER (WHERE e.status = 'available'), 0)::bigint
                   AS available_amount,
               COALESCE(SUM(sign * e.net_amount) FILTER (WHERE e.status = 'paid_out'), 0)::bigint
                   AS paid_out_amount
        FROM earnings e
        CROSS JOIN LATERAL (
            SELECT CASE WHEN e.kind IN {NEGATIVE_KINDS_SQL} THEN -1 ELSE 1 END AS sign,
                   to_char(e.earned_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month
        ) d
        WHERE e.api_id = $1 AND e.earned_at >= $2 AND e.earned_at < $3
          AND (owner.creator_id = $4 OR $5::boolean)
        GROUP BY GROUPING SETS ((e.currency), (e.currency, month), (e.currency, e.plan_id))
    ) totals ON true
    LEFT JOIN api_pricing_plans plan ON plan.id = totals.plan_id
    WHERE owner.api_id = $1
"""  # noqa: S608  (constant SQL)


@dataclass(frozen=True, slots=True)
class UsageRow:
    # GROUPING(day, plan, consumer), a bit per column left out: 7 the total, 3 a day, 5 a plan, 6 a consumer.
    grouping_id: int
    day: date | None
    plan_id: uuid.UUID | None
    plan_name: str | None
    consumer_id: uuid.UUID | None
    calls: int
    successful_calls: int
    failed_calls: int
    unique_consumers: int


@dataclass(frozen=True, slots=True)
class ApiEarnings:
    """The API's owner and its earnings rows (none when the caller may not see them)."""

    creator_id: str
    rows: list[Mapping[str, Any]]


class AnalyticsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get_api(self, api_id: str) -> Api | None:
        return await self._session.get(Api, api_id)

    async def usage(self, api_id: str, start: datetime, end: datetime, top: int) -> list[UsageRow]:
        result = await self._session.execute(
            USAGE_SQL, {"api_id": api_id, "start": start, "end": end, "limit": top}
        )
        return [UsageRow(*row) for row in result]


async def api_earnings(
    connection: Any, api_id: str, start: datetime, end: datetime, *, caller: str, admin: bool
) -> ApiEarnings | None:
    """The API's owner and, if `caller` owns the API or is an admin, its earnings rows
    (`grouping_id`, `currency`, `month`, `plan_id`, `plan_name` and the amounts); None when
    there is no such API. `connection`: an asyncpg connection; one round trip, kept prepared."""
    found: list[Mapping[str, Any]] = await connection.fetch(EARNINGS_SQL, api_id, start, end, caller, admin)
    if not found:
        return None
    rows = [row for row in found if row["grouping_id"] is not None]
    return ApiEarnings(creator_id=found[0]["creator_id"], rows=rows)
