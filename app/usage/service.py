"""Usage aggregation: metering counts -> `usage_records` per window -> Stripe meter events.

Windows (see `app.usage.windows`) are recorded once each with a final count: whole days once
they have ended, and a partial day up to the instant billing changes (a plan change, a
cancellation, the end of the last period), so the last day is billed and the calls of each
plan are billed by that plan. Metering down -> that subscription stops at the first missing
window and the next run resumes there.

Each pay-per-use window is one meter event, and its outcome is recorded on its own row:
`accepted` windows are never sent again; a window Stripe refuses is `quarantined` with Stripe's
error (counted in a metric, listed by `billing usage quarantine`) and sent again only by
`billing usage retry`; its neighbours go on. A window is marked sent before it is sent, under an
idempotency key of its own: resent after a lost answer, Stripe answers with its first answer
instead of counting it again. Stripe remembers that answer (and the identifier) for 24 hours,
so a window still unanswered 23 hours after its first send is quarantined rather than resent:
whether Stripe counted it is then for an operator to check. Counting never depends on Stripe's
memory: our rows say what was taken.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock, metrics
from app.config import Settings
from app.db.claims import claim_period
from app.db.unit_of_work import unit_of_work
from app.errors import BadRequest, DomainError
from app.integrations.metering import MeteringClient, MeteringUnavailable
from app.outbox.service import Outbox
from app.periods import usage_period
from app.plans.service import meter_event_name
from app.stripe import StripeGateway
from app.stripe.meters import MeterEventRefused
from app.usage.repository import (
    BatchRead,
    MeteredSubscription,
    Quarantined,
    Unreported,
    UsageRepository,
)
from app.usage.windows import DAY, day_start, meter_event_identifier, window_boundary

log = logging.getLogger(__name__)

BATCH_SIZE = 5_000
# Subscriptions the period-close pass reads (and settles) per transaction holding the settlement
# lock alone: the writers of windows (a plan change's flush among them) wait at most for one such
# read of this many.
SETTLE_BATCH = 1_000
# Stripe accepts meter events up to 35 days old; older windows are not fetched.
MAX_BACKFILL_DAYS = 35
METERING_CONCURRENCY = 8
REPORT_CONCURRENCY = 8  # meter events in flight at once, far under Stripe's meter event rate limit
QUOTA_JOB = "quota_overrun"


# A window being sent is left alone by other runs this long; Stripe answers within its timeout.
REPORT_LEASE = timedelta(minutes=2)
# Stripe replays an idempotent answer and drops a repeated identifier for at least 24 hours.
REPLAY_HORIZON = timedelta(hours=23)


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
    # Windows not settled by this run: Stripe failed for the moment (sent again next run, under
    # the same key), or another run is sending them.
    stripe_failures: int = 0
    # Windows quarantined by this run: refused by Stripe, or unanswered past REPLAY_HORIZON.
    quarantined: int = 0
    # Subscriptions newly flagged over their plan's call limit in their current period.
    over_limit: int = 0
    # Periods the period-close pass newly settled (every window billed in them recorded and sent).
    settled: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """Which windows of a subscription a run records: from its last window (or `oldest_day`)
    through whole days up to `last_day`, and a partial day up to `stop` if it falls earlier."""

    oldest_day: date
    last_day: date
    stop: datetime | None = None
    # Backfill: every day of the span again (present windows are kept), not from the last window.
    from_oldest: bool = False
    # When `oldest_day` starts and `last_day` ends: the instants a subscription's windows are
    # compared with, once per subscription of every batch.
    oldest_start: datetime = field(init=False)
    days_end: datetime = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "oldest_start", day_start(self.oldest_day))
        object.__setattr__(self, "days_end", day_start(self.last_day + DAY))


def _first_window(subscription: MeteredSubscription, chosen: Span) -> tuple[datetime, datetime | None]:
    """Where the subscription's next window to record starts, and the instant its windows stop
    at (None: none, they go on day by day)."""
    last = subscription.last_window_end
    if (
        last is not None
        and not chosen.from_oldest
        and last >= max(chosen.oldest_start, subscription.started_at)
    ):
        cursor = last  # the usual case; the maximum below, without building its dates
    else:
        cursor = day_start(max(subscription.started_at.astimezone(UTC).date(), chosen.oldest_day))
        if last is not None and not chosen.from_oldest:
            cursor = max(cursor, last)
    if chosen.stop is None and subscription.ended_at is None:
        return cursor, None
    return cursor, min(window_boundary(t) for t in (chosen.stop, subscription.ended_at) if t is not None)


def _window_end(cursor: datetime, stop: datetime | None, chosen: Span) -> datetime | None:
    """Where the window starting at `cursor` ends, or None when none is due there: its day has
    not ended (past the span's last day), or the windows have reached `stop`."""
    if stop is None:
        if cursor >= chosen.days_end:  # the usual case: every ended day is in
            return None
    elif cursor >= stop:
        return None
    midnight = day_start(cursor.astimezone(UTC).date() + DAY)
    if stop is not None and stop < midnight:
        return stop
    return midnight if cursor < chosen.days_end else None


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
        """Record and report every ended window not yet recorded, for all metered subscriptions
        (or `only` these), batch by batch; safe to run concurrently and to rerun. A subscription
        that has ended gets its last, partial day too, up to the instant it ended."""
        today = today or clock.today()
        span = Span(oldest_day=today - timedelta(days=MAX_BACKFILL_DAYS), last_day=today - timedelta(days=1))
        # A run for some subscriptions (a renewal draft's, for its one) reads without the lock
        # first: it takes the lock alone only for those it finds ready.
        return await self._run(
            lambda _subscription: span, only=only, quiet_from=span.days_end, lock_reads=only is None
        )

    async def close(self, subscription_id: uuid.UUID, at: datetime) -> UsageRun:
        """Record the subscription's windows up to `at` under its current plan and report them:
        called before its plan changes or it is cancelled, so the calls made until then are
        billed (or not) by the plan they were made on, on this period's invoice."""
        today = at.astimezone(UTC).date()

        def span(subscription: MeteredSubscription) -> Span:
            # Unmetered plans bill no calls: only today's part before the change is set apart.
            oldest = today - timedelta(days=MAX_BACKFILL_DAYS) if subscription.metered else today
            return Span(oldest_day=oldest, last_day=today - timedelta(days=1), stop=at)

        # Inside a plan change or a cancellation: it does not wait for other writers of windows.
        return await self._run(span, only=[subscription_id], metered_only=False, lock_reads=False)

    async def flush(self, subscription_id: uuid.UUID, at: datetime) -> bool:
        """`close`, True when every window up to `at` is recorded and none is left unsent."""
        try:
            run = await self.close(subscription_id, at)
        except DomainError:
            log.warning("usage flush failed", exc_info=True)
            return False
        return not run.unavailable and not run.stripe_failures

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
        span = Span(oldest_day=first, last_day=last, from_oldest=True)
        return await self._run(
            lambda _subscription: span, only=only, on_batch=on_batch, lock_reads=only is None
        )

    async def quarantined(self, subscription_id: uuid.UUID | None = None) -> list[Quarantined]:
        """Windows in quarantine (oldest first), with Stripe's error."""
        async with self._sessionmaker() as session:
            return await UsageRepository(session).quarantined(subscription_id)

    async def retry(
        self, *, window_id: uuid.UUID | None = None, subscription_id: uuid.UUID | None = None
    ) -> UsageRun:
        """An operator's retry: the quarantined window (or all of a subscription's) goes back
        to pending under a new idempotency key and is sent now."""
        async with unit_of_work(self._sessionmaker) as session:
            owners = await UsageRepository(session).requeue(
                window_id=window_id, subscription_id=subscription_id
            )
        run = UsageRun(subscriptions=len(owners))
        await self._report(owners, run)
        return run

    async def _run(
        self,
        span: Callable[[MeteredSubscription], Span],
        *,
        only: Sequence[uuid.UUID] | None,
        on_batch: Callable[[int], None] | None = None,
        metered_only: bool = True,
        lock_reads: bool = True,
        quiet_from: datetime | None = None,
    ) -> UsageRun:
        """Batch by batch: read (and settle), record, send, check call limits. With `quiet_from`
        (where every subscription's windows to record stop, the same for all), a subscription
        with nothing to do is settled in its read and goes no further."""
        run = UsageRun()
        after: uuid.UUID | None = None
        while True:
            batch = await self._read_batch(
                run,
                after=after,
                limit=BATCH_SIZE,
                only=only,
                metered_only=metered_only,
                lock_reads=lock_reads,
                quiet_from=quiet_from,
            )
            if not batch.read:
                return run
            acting = batch.subscriptions
            last_windows = await self._record(acting, span, run)
            # Every subscription's: windows billed on a plan it has since left are still sent.
            await self._report([s.id for s in acting], run)
            await self._flag_overruns([s for s in acting if s.call_limit is not None], clock.now(), run)
            # Read again those whose periods this run may have made ready: windows recorded, or
            # windows to send that are now sent or quarantined.
            changed = [s.id for s in acting if s.id in last_windows or s.period_unsent]
            if changed:
                await self._read_batch(
                    run,
                    after=None,
                    limit=len(changed),
                    only=changed,
                    metered_only=metered_only,
                    lock_reads=lock_reads,
                    quiet_from=None,
                )
            run.subscriptions += batch.read
            if on_batch is not None:
                on_batch(batch.read)
            if batch.read < BATCH_SIZE:  # the last batch: no need to ask for the next
                return run
            after = batch.last_id

    async def _read_batch(
        self,
        run: UsageRun,
        *,
        after: uuid.UUID | None,
        limit: int,
        only: Sequence[uuid.UUID] | None,
        metered_only: bool,
        lock_reads: bool,
        quiet_from: datetime | None,
    ) -> BatchRead:
        """The period-close pass with a batch's read, one read of each subscription: the batch
        is read in parts of SETTLE_BATCH, each in a transaction that holds the settlement lock
        alone and settles, in its read, the periods it finds ready (`_read_and_settle`), so a
        writer of windows waits at most for one part. A run for a few subscriptions
        (`lock_reads` False: a flush inside a plan change or a cancellation, which must not wait
        for other writers, or a renewal draft's run) reads without the lock and takes it alone
        only to settle what it found ready, read again under the lock."""
        if not lock_reads:
            async with self._sessionmaker() as session:
                found = await UsageRepository(session).metered_subscriptions(
                    after=after, limit=limit, only=only, metered_only=metered_only
                )
            ready = [s.id for s in found if s.ready]
            for start in range(0, len(ready), SETTLE_BATCH):
                part = ready[start : start + SETTLE_BATCH]
                await self._read_and_settle(
                    run, after=None, limit=len(part), only=part, metered_only=metered_only, quiet_from=None
                )
            return BatchRead(found, read=len(found), last_id=found[-1].id if found else None, settled=0)
        batch = BatchRead([], read=0, last_id=None, settled=0)
        while batch.read < limit:
            size = min(SETTLE_BATCH, limit - batch.read)
            part_read = await self._read_and_settle(
                run, after=after, limit=size, only=only, metered_only=metered_only, quiet_from=quiet_from
            )
            batch.subscriptions += part_read.subscriptions
            batch.read += part_read.read
            batch.last_id = part_read.last_id or batch.last_id
            if part_read.read < size:
                break
            after = part_read.last_id
        return batch

    async def _read_and_settle(
        self,
        run: UsageRun,
        *,
        after: uuid.UUID | None,
        limit: int,
        only: Sequence[uuid.UUID] | None,
        metered_only: bool,
        quiet_from: datetime | None,
    ) -> BatchRead:
        """Read these subscriptions alone among the writers of windows (the settlement lock),
        settling in the same statement the current periods found ready, with the calls read: a
        window recorded or re-queued meanwhile waits for the commit, and then un-settles the
        period."""
        async with unit_of_work(self._sessionmaker) as session:
            repo = UsageRepository(session)
            await repo.lock_settlements()
            read = await repo.settle_ready(
                after=after, limit=limit, only=only, metered_only=metered_only, quiet_from=quiet_from
            )
        run.settled += read.settled
        return read

    async def _record(
        self,
        batch: list[MeteredSubscription],
        span: Callable[[MeteredSubscription], Span],
        run: UsageRun,
    ) -> dict[uuid.UUID, datetime]:
        """Record the batch's windows to record; returns where the windows of those that got
        new ones now stop."""
        gate = asyncio.Semaphore(METERING_CONCURRENCY)

        async def earlier_in_day(subscription: MeteredSubscription, start: datetime) -> tuple[int, int]:
            midnight = day_start(start.date())
            if start == midnight:
                return 0, 0
            async with self._sessionmaker() as session:
                return await UsageRepository(session).day_so_far(subscription.id, midnight, start)

        async def windows_of(
            subscription: MeteredSubscription, chosen: Span, cursor: datetime, stop: datetime | None
        ) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            while (end := _window_end(cursor, stop, chosen)) is not None:
                day = cursor.astimezone(UTC).date()
                try:
                    async with gate:
                        usage = await self._metering.subscription_usage(subscription.id, day, day)
                except MeteringUnavailable:
                    run.unavailable.append(subscription.id)
                    break
                # The day's count so far, less what its earlier windows already hold.
                before_successful, before_failed = await earlier_in_day(subscription, cursor)
                successful = max(usage.successful_calls - before_successful, 0)
                failed = max(usage.failed_calls - before_failed, 0)
                billed = subscription.bills_calls and successful > 0
                rows.append(
                    {
                        "subscription_id": subscription.id,
                        "window_start": cursor,
                        "window_end": end,
                        "quantity": successful,
                        "successful_calls": successful,
                        "failed_calls": failed,
                        "meter_event_identifier": (
                            meter_event_identifier(subscription.id, cursor) if billed else None
                        ),
                        "report_status": "pending" if billed else "unbilled",
                    }
                )
                cursor = end
            return rows

        due = []
        for subscription in batch:
            chosen = span(subscription)
            cursor, stop = _first_window(subscription, chosen)
            # Most have nothing due (at a period's close, all of them): no task for those.
            if _window_end(cursor, stop, chosen) is not None:
                due.append(windows_of(subscription, chosen, cursor, stop))
        per_subscription = await asyncio.gather(*due)
        rows = [row for rows in per_subscription for row in rows]
        run.fetched += len(rows)
        if not rows:  # nothing new (the usual case at a period's close): no transaction
            return {}
        async with unit_of_work(self._sessionmaker) as session:
            run.recorded += await UsageRepository(session).insert_records(rows)
        return {rows[-1]["subscription_id"]: rows[-1]["window_end"] for rows in per_subscription if rows}

    async def _report(self, subscription_ids: list[uuid.UUID], run: UsageRun) -> None:
        """Send the pending windows of these subscriptions, each on its own, and record each
        outcome: one window's refusal or failure never holds back another."""
        if not subscription_ids:
            return
        now = clock.now()
        async with unit_of_work(self._sessionmaker) as session:
            claimed, expired, in_flight = await UsageRepository(session).claim_pending(
                subscription_ids, now=now, lease=REPORT_LEASE, horizon=REPLAY_HORIZON
            )
        accepted: list[uuid.UUID] = []
        refused: dict[uuid.UUID, str] = {}
        failed: list[uuid.UUID] = []
        gate = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def send(window: Unreported) -> None:
            try:
                async with gate:
                    await self._stripe.report_meter_event(
                        event_name=meter_event_name(window.api_id),
                        customer=window.stripe_customer_id,
                        value=window.quantity,
                        identifier=window.identifier,
                        timestamp=window.event_at,
                        idempotency_key=f"meter-event:{window.identifier}:{window.attempt}",
                    )
            except MeterEventRefused as exc:
                refused[window.id] = str(exc)
            except DomainError:
                failed.append(window.id)
            else:
                accepted.append(window.id)

        # Side by side: one slow answer (or the SDK's backoff before a retry) holds up no other.
        await asyncio.gather(*(send(window) for window in claimed))
        if claimed:
            async with unit_of_work(self._sessionmaker) as session:
                repo = UsageRepository(session)
                await repo.mark_accepted(accepted, clock.now())
                await repo.quarantine(refused, clock.now())
                await repo.release(failed)
        if refused or expired:
            log.warning(
                "usage windows quarantined", extra={"refused": len(refused), "unanswered": len(expired)}
            )
        if failed:
            log.warning("stripe meter events failed, sent again next run", extra={"windows": len(failed)})
        metrics.USAGE_QUARANTINED.labels("refused").inc(len(refused))
        metrics.USAGE_QUARANTINED.labels("unanswered").inc(len(expired))
        run.reported += len(accepted)
        run.quarantined += len(refused) + len(expired)
        run.stripe_failures += len(failed) + in_flight

    async def _flag_overruns(self, batch: list[MeteredSubscription], now: datetime, run: UsageRun) -> None:
        """Flag, once per (subscription, period), the recorded calls going over the call limit:
        a claimed `job_runs` row and an outbound `quota_overrun` notification, in one transaction."""
        if not batch:
            return
        periods = {
            s.id: usage_period(s.current_period_start, s.current_period_end, s.started_at, now) for s in batch
        }
        limits = {s.id: s.call_limit for s in batch if s.call_limit is not None}
        async with unit_of_work(self._sessionmaker) as session:
            repo = UsageRepository(session)
            calls = await repo.period_overruns(
                [(id_, *periods[id_]) for id_ in limits], list(limits.values())
            )
            outbox = Outbox(session, None)
            for subscription in await repo.subscriptions(list(calls)):
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
