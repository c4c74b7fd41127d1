"""Usage aggregation: metering counts -> `usage_records` per window -> Stripe meter events.

A window is one UTC day, and only days that have ended are recorded, so a window's count is
final when it is written (the metering service answers per day). Each window is inserted once
(unique per subscription and window) and, for pay-per-use, sent to Stripe once under an
identifier derived from the subscription and the day. The meter event is stamped with the
last second of its day: a day in which a billing period ends is billed in the next period,
so no call is billed twice or dropped. Metering down -> that subscription stops at the first
missing day and the next run resumes there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.config import Settings
from app.errors import BadRequest, DomainError
from app.integrations.metering import MeteringClient, MeteringUnavailable
from app.outbox.service import Outbox
from app.plans.service import meter_event_name
from app.stripe import StripeGateway
from app.subscriptions.service import usage_period
from app.usage.repository import MeteredSubscription, UsageRepository
from app.worker.periods import claim_period

log = logging.getLogger(__name__)

BATCH_SIZE = 100
# Stripe accepts meter events up to 35 days old; older windows are not fetched.
MAX_BACKFILL_DAYS = 35
METERING_CONCURRENCY = 8
QUOTA_JOB = "quota_overrun"


def meter_event_identifier(subscription_id: uuid.UUID, day: date) -> str:
    return f"usage:{subscription_id}:{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class BadBackfillRange(BadRequest):
    pass


def check_backfill_range(first: date, last: date, today: date) -> None:
    """Only ended days Stripe still takes meter events for (the last 35) can be backfilled."""
    if first > last:
        raise BadBackfillRange(f"--from {first} is after --to {last}")
    if last >= today:
        raise BadBackfillRange(f"--to must be a day that has ended (before {today})")
    oldest = today - timedelta(days=MAX_BACKFILL_DAYS)
    if first < oldest:
        raise BadBackfillRange(
            f"--from must be {oldest} or later: Stripe takes meter events up to {MAX_BACKFILL_DAYS} days old"
        )


@dataclass
class UsageRun:
    # Windows pulled from the metering service, and those of them newly recorded.
    fetched: int = 0
    recorded: int = 0
    subscriptions: int = 0
    reported: int = 0
    unavailable: list[uuid.UUID] = field(default_factory=list)
    # Batches whose meter events Stripe refused or could not take; they go again next run.
    stripe_failures: int = 0
    # Subscriptions newly flagged over their plan's call limit in their current period.
    over_limit: int = 0


class UsageService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        stripe: StripeGateway,
        settings: Settings,
        http: httpx.AsyncClient,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._stripe = stripe
        self._metering = MeteringClient(http, settings)

    async def aggregate(
        self, *, only: Sequence[uuid.UUID] | None = None, today: date | None = None
    ) -> UsageRun:
        """Record and report every ended day not yet recorded, for all metered subscriptions
        (or `only` these), batch by batch; safe to run concurrently and to rerun."""
        today = today or clock.today()
        oldest = today - timedelta(days=MAX_BACKFILL_DAYS)

        def days(subscription: MeteredSubscription) -> tuple[date, date]:
            first = subscription.started_at.astimezone(UTC).date()
            if subscription.last_window_start is not None:
                first = subscription.last_window_start.astimezone(UTC).date() + timedelta(days=1)
            return max(first, oldest), today - timedelta(days=1)

        return await self._run(days, only=only)

    async def backfill(
        self,
        first: date,
        last: date,
        *,
        only: Sequence[uuid.UUID] | None = None,
        today: date | None = None,
        on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> UsageRun:
        """Pull the days first..last again for the metered subscriptions (or `only` these) and
        record the windows missing (those present are kept: a window's count is final), then
        report pay-per-use usage as the worker does. `on_start` gets how many subscriptions
        there are, `on_batch` how many a finished batch held."""
        today = today or clock.today()
        check_backfill_range(first, last, today)
        if on_start is not None:
            async with self._sessionmaker() as session:
                on_start(await UsageRepository(session).count_metered(only=only))

        def days(subscription: MeteredSubscription) -> tuple[date, date]:
            return max(first, subscription.started_at.astimezone(UTC).date()), last

        return await self._run(days, only=only, on_batch=on_batch)

    async def _run(
        self,
        days: Callable[[MeteredSubscription], tuple[date, date]],
        *,
        only: Sequence[uuid.UUID] | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> UsageRun:
        run = UsageRun()
        after: uuid.UUID | None = None
        while True:
            async with self._sessionmaker() as session:
                batch = await UsageRepository(session).metered_subscriptions(
                    after=after, limit=BATCH_SIZE, only=only
                )
            if not batch:
                return run
            await self._record(batch, days, run)
            await self._report([s.id for s in batch if s.pay_per_use], run)
            await self._flag_overruns([s for s in batch if s.call_limit is not None], clock.now(), run)
            run.subscriptions += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
            after = batch[-1].id

    async def _record(
        self,
        batch: list[MeteredSubscription],
        days: Callable[[MeteredSubscription], tuple[date, date]],
        run: UsageRun,
    ) -> None:
        gate = asyncio.Semaphore(METERING_CONCURRENCY)

        async def windows_of(subscription: MeteredSubscription) -> list[dict[str, Any]]:
            day, last = days(subscription)
            rows: list[dict[str, Any]] = []
            while day <= last:
                try:
                    async with gate:
                        usage = await self._metering.subscription_usage(subscription.id, day, day)
                except MeteringUnavailable:
                    run.unavailable.append(subscription.id)
                    break
                quantity = usage.successful_calls
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "subscription_id": subscription.id,
                        "window_start": day_start(day),
                        "window_end": day_start(day + timedelta(days=1)),
                        "quantity": quantity,
                        "successful_calls": usage.successful_calls,
                        "failed_calls": usage.failed_calls,
                        "meter_event_identifier": (
                            meter_event_identifier(subscription.id, day)
                            if subscription.pay_per_use and quantity > 0
                            else None
                        ),
                    }
                )
                day += timedelta(days=1)
            return rows

        per_subscription = await asyncio.gather(*(windows_of(s) for s in batch))
        rows = [row for rows in per_subscription for row in rows]
        run.fetched += len(rows)
        async with self._sessionmaker.begin() as session:
            run.recorded += await UsageRepository(session).insert_records(rows)

    async def _report(self, subscription_ids: list[uuid.UUID], run: UsageRun) -> None:
        if not subscription_ids:
            return
        try:
            async with self._sessionmaker.begin() as session:
                repo = UsageRepository(session)
                claimed = await repo.claim_unreported(subscription_ids)
                for record in claimed:
                    await self._stripe.report_meter_event(
                        event_name=meter_event_name(record.api_id),
                        customer=record.stripe_customer_id,
                        value=record.quantity,
                        identifier=record.identifier,
                        timestamp=record.window_end - timedelta(seconds=1),
                    )
                await repo.mark_reported([r.id for r in claimed], clock.now())
        except DomainError:
            # Nothing is marked reported; the events Stripe did take are dropped as repeats then.
            log.warning("stripe meter events failed", exc_info=True)
            run.stripe_failures += 1
            return
        run.reported += len(claimed)

    async def _flag_overruns(self, batch: list[MeteredSubscription], now: datetime, run: UsageRun) -> None:
        """Flag, once per (subscription, period), the recorded calls going over the call limit:
        a claimed `job_runs` row and an outbound `quota_overrun` notification, in one transaction."""
        periods = {
            s.id: usage_period(s.current_period_start, s.current_period_end, s.started_at, now) for s in batch
        }
        limits = {s.id: s.call_limit for s in batch if s.call_limit is not None}
        async with self._sessionmaker.begin() as session:
            repo = UsageRepository(session)
            calls = await repo.period_calls([(id_, *period) for id_, period in periods.items()])
            over = [id_ for id_, count in calls.items() if id_ in limits and count > limits[id_]]
            outbox = Outbox(session, None)
            for subscription in await repo.subscriptions(over):
                start, end = periods[subscription.id]
                if not await claim_period(session, QUOTA_JOB, str(subscription.id), start.isoformat()):
                    continue
                await outbox.notify(
                    subscription,
                    "quota_overrun",
                    f"{subscription.id}:{start.isoformat()}",
                    {
                        "consumer_id": str(subscription.consumer_id),
                        "period_start": start.isoformat(),
                        "period_end": end.isoformat(),
                        "recorded_calls": calls[subscription.id],
                        "call_limit": limits[subscription.id],
                    },
                )
                run.over_limit += 1
