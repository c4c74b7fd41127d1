"""Queries of the usage worker; each touches a whole batch of subscriptions at once."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple

import asyncpg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import Grouping

from app import clock
from app.db import driver_connection
from app.db.statements import DriverStatement as _DriverStatement
from app.models import (
    Consumer,
    PricingPlan,
    PricingPlanVersion,
    Subscription,
    UsagePeriodSettlement,
    UsageRecord,
)
from app.models.subscription import LIVE_STATUSES
from app.usage.windows import (
    WindowBounds,
    billed_before,
    covers_period,
    earliest_start,
    event_instant,
    may_end_early,
    stamped_in,
    window_bounds,
)

_Ts = TypeVarTuple("_Ts")
# A cancelled subscription is still read until its last window is in (at most this long after).
ENDED_LOOKBACK = timedelta(days=36)


UNANSWERED = (
    "no answer from Stripe since the first send, for longer than it remembers identifiers: "
    "check the meter's events in Stripe before retrying"
)


# Not frozen: one is built for every subscription of every batch the usage job reads, and a
# frozen dataclass's __init__ costs about four times as much (each field set through
# object.__setattr__). Nothing changes one after it is built.
@dataclass(slots=True)
class MeteredSubscription:
    id: uuid.UUID
    pay_per_use: bool
    started_at: datetime
    last_window_end: datetime | None
    call_limit: int | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    # The instant it ended (cancelled, or its last period over): no window reaches past it.
    ended_at: datetime | None = None
    metered: bool = True
    # Whether a window billed in its current period or before is still to send (one billed in
    # the next period, e.g. the closing day's, is not counted; a quarantined one is not to send).
    period_unsent: bool = False
    # Its current period was ready to settle as read (see `_metered_statement`): metered, not
    # settled yet, its windows cover it and none billed in it (or before) is left to send.
    ready: bool = False
    # It has an overage item on the API's meter: all its calls are reported (the tiers bill them).
    overage_item: bool = False

    @property
    def bills_calls(self) -> bool:
        """Its calls go to Stripe's meter: a pay-per-use plan, or an overage plan's meter item."""
        return self.pay_per_use or self.overage_item


@dataclass(slots=True)
class BatchRead:
    """What one read of a batch (or part of one) found: the subscriptions with anything to do,
    how many it read, the last one's id (where the next read starts) and how many periods it
    newly settled."""

    subscriptions: list[MeteredSubscription]
    read: int
    last_id: uuid.UUID | None
    settled: int


@dataclass(frozen=True, slots=True)
class Unreported:
    id: uuid.UUID
    subscription_id: uuid.UUID
    api_id: str
    stripe_customer_id: str
    quantity: int
    identifier: str
    event_at: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: uuid.UUID
    subscription_id: uuid.UUID
    window_start: datetime
    window_end: datetime
    quantity: int
    identifier: str
    error: str | None
    quarantined_at: datetime | None


_RECORD_COLUMNS = (
    "subscription_id",
    "window_start",
    "window_end",
    "quantity",
    "successful_calls",
    "failed_calls",
    "meter_event_identifier",
    "report_status",
)
_WRITTEN = frozenset(_RECORD_COLUMNS)
# The windows of a batch, as one array per column; `created_at` last. Each id is the column's
# default, a time-ordered uuidv7 (migration 0016): the batch's keys go to the right edge of the
# primary key's index, however large the table. No conflict handling here:
# a window is new unless a run is repeated or two runs overlap, so the plain insert (whose
# unique indexes refuse a duplicate anyway) is tried first and the speculative ON CONFLICT
# insert, which costs about a third more per row, only when that insert met a duplicate.
_INSERT_RECORDS = """
    INSERT INTO usage_records (subscription_id, window_start, window_end, quantity, successful_calls,
                               failed_calls, meter_event_identifier, report_status, report_attempt,
                               created_at)
    SELECT *, 0, $9
    FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], $5::bigint[],
                $6::bigint[], $7::text[], $8::text[])
"""
# No conflict target: a concurrent run may collide on the window or on its identifier (the same thing).
_INSERT_NEW_RECORDS = _INSERT_RECORDS + "ON CONFLICT DO NOTHING"

# The period-close pass and the writers of windows exclude each other on this advisory lock
# (transaction-scoped): the pass holds it alone while it reads a part of its batch and settles
# the periods it found ready, every transaction that records or re-queues windows shares it. A
# window recorded meanwhile is then either seen by the pass (which then settles with it, or not
# at all) or un-settles the period after the pass commits.
_SETTLEMENT_LOCK = 0x7573_6167_6573  # "usages"
# Taken through SQLAlchemy, not the driver: that begins the session's transaction on the
# connection (the driver's statements after it run inside; alone they would each commit).
_LOCK_SETTLEMENTS = text("SELECT pg_advisory_xact_lock(:key)")
_SHARE_SETTLEMENTS = text("SELECT pg_advisory_xact_lock_shared(:key)")

# A window recorded or sent again un-settles the periods it is billed in or before.
_UNSETTLE = """
    DELETE FROM usage_period_settlements s
    USING unnest($1::uuid[], $2::timestamptz[]) AS w(subscription_id, window_end)
    WHERE s.subscription_id = w.subscription_id AND w.window_end - interval '1 second' < s.period_end
"""


# Windows to send: pending ones, and (for one rollout) those the previous release wrote with an
# identifier, which the column's default marks `unbilled`.
_SENDABLE = and_(
    UsageRecord.meter_event_identifier.is_not(None),
    UsageRecord.reported_at.is_(None),
    UsageRecord.report_status.in_(("pending", "unbilled")),
)
_UUIDS = ARRAY(Uuid())
_ENDED_AT = func.coalesce(Subscription.expires_at, Subscription.cancelled_at)
_IS_METERED = or_(PricingPlan.type == "pay_per_use", PricingPlanVersion.call_limit.is_not(None))


def _settled_calls(end: datetime) -> ColumnElement[int | None]:
    """A settlement's calls for a draft of the period ending at `end`, joined to its subscription
    (NULL: no settlement, or the windows it saw no longer cover the period for the subscription
    as it is now: one that has since come to end with its period has a last, partial window)."""
    covered = covers_period(
        UsagePeriodSettlement.covered_through,
        literal(end, DateTime(timezone=True)),
        may_end_early=may_end_early(Subscription.status, Subscription.cancel_at_period_end),
    )
    return case((covered, UsagePeriodSettlement.calls), else_=null())


def _earliest_ends(windows: Iterable[tuple[uuid.UUID, datetime]]) -> dict[uuid.UUID, datetime]:
    """Each subscription's earliest window end: that window is billed no later than its others.
    Keyed by the id's integer while it runs: a UUID hashes in Python, an int in C (a fifth of the
    time over a 100,000-window batch)."""
    earliest: dict[int, tuple[uuid.UUID, datetime]] = {}
    for subscription_id, window_end in windows:
        known = earliest.get(subscription_id.int)
        if known is None or window_end < known[1]:
            earliest[subscription_id.int] = (subscription_id, window_end)
    return dict(earliest.values())


def _refuse(row: dict[str, Any]) -> ValueError:
    """Why insert_records will not write this row: the columns it names but does not write, and
    those it lacks."""
    return ValueError(
        f"insert_records writes exactly {', '.join(_RECORD_COLUMNS)} (the id is the column's "
        f"default); a row names {sorted(row.keys() - _WRITTEN)} it does not write and lacks "
        f"{sorted(_WRITTEN - row.keys())}"
    )


def _readable(
    statement: Select[*_Ts],
    only: Sequence[uuid.UUID] | None,
    *,
    metered_only: bool = True,
    ended_since: ColumnElement[datetime] | None = None,
) -> Select[*_Ts]:
    """Live subscriptions, and cancelled ones lately ended (their last windows may be missing:
    since `ended_since`, by default ENDED_LOOKBACK ago); with `metered_only`, only those on a
    pay-per-use plan or a plan version with a call limit."""
    since = ended_since if ended_since is not None else literal(clock.now() - ENDED_LOOKBACK)
    statement = (
        statement.join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(
            PricingPlanVersion,
            (PricingPlanVersion.plan_id == Subscription.pricing_plan_id)
            & (PricingPlanVersion.version == Subscription.plan_version),
        )
        .where(
            or_(
                Subscription.status.in_(LIVE_STATUSES),
                and_(Subscription.status == "cancelled", since <= _ENDED_AT),
            )
        )
    )
    if metered_only:
        statement = statement.where(_IS_METERED)
    if only is not None:
        statement = statement.where(Subscription.id.in_(only))
    return statement


# Before every subscription id (they are random UUIDs, never the nil one): the first batch's `after`.
_BEFORE_ANY_ID = uuid.UUID(int=0)


def _metered_statement(*, only: bool, metered_only: bool, settle: bool) -> _DriverStatement:
    """`metered_subscriptions`' statement: after :after by id, :limit of them, cancelled ones
    ended since :ended_since, with `only` those of :only; with `settle`, the current periods
    found ready are settled at :settled_at by the same statement."""
    # A window belongs to the period holding its meter event's instant (app.usage.windows: its
    # last second). A subscription's windows follow one another without overlap, so the one
    # starting last ends last: one range of the (subscription, window start) key, from the start
    # of its period's first day, gives both the period's calls and where its windows stop; only
    # a subscription with no window since then is read backwards from its key, one entry.
    since_period = (
        select(
            func.max(UsageRecord.window_end).label("last_end"),
            func.sum(UsageRecord.quantity)
            .filter(
                stamped_in(
                    UsageRecord.window_end, Subscription.current_period_start, Subscription.current_period_end
                )
            )
            .label("calls"),
        )
        .where(
            UsageRecord.subscription_id == Subscription.id,
            UsageRecord.window_start >= earliest_start(Subscription.current_period_start),
        )
        .lateral("since_period")
    )
    last_window = (
        select(UsageRecord.window_end)
        .where(UsageRecord.subscription_id == Subscription.id)
        .order_by(UsageRecord.window_start.desc())
        .limit(1)
        .scalar_subquery()
    )
    unsent = (
        select(UsageRecord.id)
        .where(
            UsageRecord.subscription_id == Subscription.id,
            _SENDABLE,
            billed_before(UsageRecord.window_start, UsageRecord.window_end, Subscription.current_period_end),
        )
        .exists()
    )
    to_send = select(UsageRecord.id).where(UsageRecord.subscription_id == Subscription.id, _SENDABLE).exists()
    settled = (
        select(UsagePeriodSettlement.calls)
        .where(
            UsagePeriodSettlement.subscription_id == Subscription.id,
            UsagePeriodSettlement.period_start == Subscription.current_period_start,
            UsagePeriodSettlement.period_end == Subscription.current_period_end,
        )
        .exists()
    )
    statement = _readable(
        select(
            Subscription.id.label("id"),
            PricingPlan.type.label("plan_type"),
            Subscription.started_at.label("started_at"),
            func.coalesce(since_period.c.last_end, last_window).label("last_end"),
            PricingPlanVersion.call_limit.label("call_limit"),
            Subscription.current_period_start.label("period_start"),
            Subscription.current_period_end.label("period_end"),
            Subscription.status.label("status"),
            Subscription.cancel_at_period_end.label("cancel_at_period_end"),
            _ENDED_AT.label("ended_at"),
            _IS_METERED.label("metered"),
            settled.label("settled"),
            Subscription.stripe_overage_item_id.label("overage_item_id"),
            since_period.c.calls.label("calls"),
            unsent.label("unsent"),
            to_send.label("to_send"),
        ),
        None,
        metered_only=metered_only,
        ended_since=bindparam("ended_since", None, type_=DateTime(timezone=True)),
    )
    statement = (
        statement.outerjoin(since_period, true())
        .where(Subscription.id > bindparam("after", None, type_=Uuid()))
        .order_by(Subscription.id)
        .limit(bindparam("limit", None, type_=Integer()))
    )
    if only:
        statement = statement.where(Subscription.id == any_(bindparam("only", None, type_=_UUIDS)))
    part = statement.cte("part")
    # Whether its current period is to settle as read: metered, not settled yet, its windows
    # cover it and none billed in it (or before) is left to send.
    ready = and_(
        part.c.metered,
        part.c.period_start < part.c.period_end,
        ~part.c.settled,
        ~part.c.unsent,
        covers_period(
            part.c.last_end,
            part.c.period_end,
            may_end_early=may_end_early(part.c.status, part.c.cancel_at_period_end),
        ),
    )
    settled_now: ColumnElement[int] = literal(0)
    if settle:
        # Every period found ready settled by the same statement, with the calls and the last
        # window it read: no row goes to Python and back. A period settled already is kept.
        settling = (
            postgresql_insert(UsagePeriodSettlement)
            .from_select(
                ["subscription_id", "period_start", "period_end", "calls", "covered_through", "settled_at"],
                select(
                    part.c.id,
                    part.c.period_start,
                    part.c.period_end,
                    func.coalesce(part.c.calls, 0),
                    part.c.last_end,
                    bindparam("settled_at", None, type_=DateTime(timezone=True)),
                ).where(ready),
            )
            .on_conflict_do_nothing()
            .returning(UsagePeriodSettlement.subscription_id)
            .cte("settling")
        )
        settled_now = select(func.count()).select_from(settling).scalar_subquery()
    # With :quiet_from (the end of the last ended day, for the usage job's pass), a subscription
    # with nothing left to do is read (and settled) but not returned: every ended day's window
    # in (and the one up to its end, if it ended), none to send, no call limit to check, and
    # not waiting to be settled. The last one read is returned anyway, with how many were read.
    quiet_from = bindparam("quiet_from", None, type_=DateTime(timezone=True))
    quiet = func.coalesce(
        and_(
            quiet_from.is_not(None),
            part.c.last_end >= quiet_from,
            or_(part.c.ended_at.is_(None), part.c.last_end >= part.c.ended_at),
            ~part.c.to_send,
            part.c.call_limit.is_(None),
            true() if settle else ~ready,
        ),
        false(),
    )
    last_read = select(part.c.id).order_by(part.c.id.desc()).limit(1).scalar_subquery()
    return _DriverStatement.compile(
        select(
            *(c for c in part.c if c.name not in ("settled", "calls", "unsent", "to_send")),
            part.c.unsent,
            ready.label("ready"),
            quiet.label("quiet"),
            settled_now.label("settled_now"),
            select(func.count()).select_from(part).scalar_subquery().label("read"),
        )
        .where(or_(~quiet, part.c.id == last_read))
        .order_by(part.c.id)
    )


# The batch reads, by (only some ids, metered plans only, settling what it finds ready).
_METERED_SQL = {
    (only, metered_only, settle): _metered_statement(only=only, metered_only=metered_only, settle=settle)
    for only in (False, True)
    for metered_only in (False, True)
    for settle in (False, True)
}


# The calls billed in given periods, one statement per batch, of two kinds, each in two forms:
# every subscription's calls, or only those over a call limit given with its period (what the
# worker's quota check needs: the rest never leave PostgreSQL). The bounds a period puts on its
# windows (`WindowBounds`) are computed once per period in a derived table, which OFFSET 0 keeps
# from being folded back into the scan (where they would be computed per window).
_DATES = ARRAY(DateTime(timezone=True))
_COUNTS = ARRAY(BigInteger())
# A period's calls as a bigint, not numeric (what sum(bigint) gives): read as an int, with no
# Decimal made and converted per subscription.
_CALLS_SUM = cast(func.sum(UsageRecord.quantity), BigInteger())
_CALLS = _CALLS_SUM.label("calls")


def _bounded(periods: Any, *keep: ColumnElement[Any]) -> Any:
    """The derived table of `periods` with each one's window bounds (and the columns kept)."""
    bounds = window_bounds(periods.c.period_start, periods.c.period_end)
    return (
        select(*keep, *bounds.labelled())
        .select_from(periods)
        .offset(literal_column("0", Integer()))
        .subquery()
    )


def _periods(*arrays: tuple[str, Any, Any]) -> Any:
    """The derived table unnesting the given (name, array type, column type) arrays, in order."""
    return (
        func.unnest(*(bindparam(name, None, type_=array) for name, array, _ in arrays))
        .table_valued(*(column(name, type_) for name, _, type_ in arrays))
        .render_derived(name="periods")
    )


_PERIOD_ARRAYS = (
    ("period_start", _DATES, DateTime(timezone=True)),
    ("period_end", _DATES, DateTime(timezone=True)),
)
_LIMITS = ("call_limit", _COUNTS, BigInteger())


def _shared_statement(*, over_limit: bool) -> _DriverStatement:
    """Periods shared by many subscriptions (:ids, grouped by period and limit; :period_start,
    :period_end, :first, :last and :call_limit one entry per group, first and last its ids'
    places in :ids, from 1): one index scan of `= ANY` per group, as fast as one GROUP BY of a
    single period."""
    places = (("first", ARRAY(Integer), Integer()), ("last", ARRAY(Integer), Integer()))
    shared = _periods(*_PERIOD_ARRAYS, *places, *((_LIMITS,) if over_limit else ()))
    kept = [shared.c.first, shared.c.last, *((shared.c.call_limit,) if over_limit else ())]
    periods = _bounded(shared, *kept)
    members = Grouping(bindparam("ids", None, _UUIDS))[periods.c.first : periods.c.last]
    sums = (
        select(UsageRecord.subscription_id, _CALLS)
        .where(
            UsageRecord.subscription_id == any_(members),
            WindowBounds.of(periods.c).hold(UsageRecord.window_start, UsageRecord.window_end),
        )
        .group_by(UsageRecord.subscription_id)
    )
    if over_limit:
        sums = sums.having(periods.c.call_limit < _CALLS_SUM)
    calls = sums.lateral("t")
    return _DriverStatement.compile(
        select(calls.c.subscription_id, calls.c.calls).select_from(periods).join(calls, true())
    )


def _each_statement(*, over_limit: bool) -> _DriverStatement:
    """Periods of their own (:ids, :period_start, :period_end and :call_limit, one entry per
    subscription): one index range per subscription."""
    each = _periods(("subscription_id", _UUIDS, Uuid()), *_PERIOD_ARRAYS, *((_LIMITS,) if over_limit else ()))
    periods = _bounded(each, each.c.subscription_id, *((each.c.call_limit,) if over_limit else ()))
    calls = (
        select(_CALLS)
        .where(
            UsageRecord.subscription_id == periods.c.subscription_id,
            WindowBounds.of(periods.c).hold(UsageRecord.window_start, UsageRecord.window_end),
        )
        .lateral("t")
    )
    kept = calls.c.calls > periods.c.call_limit if over_limit else calls.c.calls.is_not(None)
    return _DriverStatement.compile(
        select(periods.c.subscription_id, calls.c.calls).select_from(periods).join(calls, true()).where(kept)
    )


PERIOD_CALLS_SHARED = _shared_statement(over_limit=False)
PERIOD_CALLS_EACH = _each_statement(over_limit=False)
PERIOD_OVERRUNS_SHARED = _shared_statement(over_limit=True)
PERIOD_OVERRUNS_EACH = _each_statement(over_limit=True)
# A batch of this many subscriptions a period or more is read period by period: on fewer, an
# `= ANY` scan per period costs more than the index range per subscription it saves (measured
# in bench/period_aggregation.py).
SHARED_PERIOD_MEMBERS = 4


def period_calls_query(
    periods: Sequence[tuple[uuid.UUID, datetime, datetime]],
    limits: Sequence[int] | None = None,
) -> tuple[_DriverStatement, list[Any]]:
    """The statement summing each subscription's calls billed in its own [start, end), with its
    arguments: period by period when the subscriptions share periods (`SHARED_PERIOD_MEMBERS`
    or more to a period on average), else each subscription on its own. With `limits` (one per
    period, in order), it returns only the subscriptions whose calls exceed their limit."""
    given_limits: Iterable[int | None] = limits if limits is not None else itertools.repeat(None)
    shared: dict[tuple[datetime, datetime, int | None], list[uuid.UUID]] = {}
    for (id_, start, end), limit in zip(periods, given_limits, strict=limits is not None):
        shared.setdefault((start, end, limit), []).append(id_)
    if len(periods) < SHARED_PERIOD_MEMBERS * len(shared):
        each = PERIOD_CALLS_EACH if limits is None else PERIOD_OVERRUNS_EACH
        given: dict[str, Any] = {
            "subscription_id": [p[0] for p in periods],
            "period_start": [p[1] for p in periods],
            "period_end": [p[2] for p in periods],
            "call_limit": limits,
        }
        return each, each.args(given)
    ids: list[uuid.UUID] = []
    firsts: list[int] = []
    lasts: list[int] = []
    for members in shared.values():
        firsts.append(len(ids) + 1)  # PostgreSQL's arrays count from 1, a slice holds both ends
        ids.extend(members)
        lasts.append(len(ids))
    statement = PERIOD_CALLS_SHARED if limits is None else PERIOD_OVERRUNS_SHARED
    given = {
        "ids": ids,
        "period_start": [start for start, _, _ in shared],
        "period_end": [end for _, end, _ in shared],
        "first": firsts,
        "last": lasts,
        "call_limit": [limit for _, _, limit in shared],
    }
    return statement, statement.args(given)


# The pending windows of a batch's subscriptions (:ids), to claim for sending.
_CLAIM_SQL = _DriverStatement.compile(
    select(
        UsageRecord.id,
        UsageRecord.subscription_id,
        Subscription.api_id,
        Consumer.stripe_customer_id,
        UsageRecord.quantity,
        UsageRecord.meter_event_identifier,
        UsageRecord.window_end,
        UsageRecord.report_attempt,
        UsageRecord.report_first_sent_at,
        UsageRecord.report_last_sent_at,
    )
    .join(Subscription, Subscription.id == UsageRecord.subscription_id)
    .join(Consumer, Consumer.id == Subscription.consumer_id)
    .where(
        UsageRecord.subscription_id == any_(bindparam("ids", None, _UUIDS)),
        _SENDABLE,
        Consumer.stripe_customer_id.is_not(None),
    )
    .order_by(UsageRecord.window_start)
    .with_for_update(of=UsageRecord, skip_locked=True)
)


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def metered_subscriptions(
        self,
        *,
        after: uuid.UUID | None,
        limit: int,
        only: Sequence[uuid.UUID] | None = None,
        metered_only: bool = True,
    ) -> list[MeteredSubscription]:
        """Subscriptions to record windows for, by id after `after`, with where their windows stop."""
        return (
            await self._read(after, limit, only, metered_only, settle_at=None, quiet_from=None)
        ).subscriptions

    async def settle_ready(
        self,
        *,
        after: uuid.UUID | None,
        limit: int,
        only: Sequence[uuid.UUID] | None = None,
        metered_only: bool = True,
        quiet_from: datetime | None = None,
    ) -> BatchRead:
        """`metered_subscriptions`, settling in the same statement the current periods found
        ready, each with the calls and the last window read with it. With `quiet_from` (where
        the windows to record stop, for a run recording every ended day), those found with
        nothing left to do are counted but not returned. The caller holds the settlement lock
        (`lock_settlements`)."""
        return await self._read(
            after, limit, only, metered_only, settle_at=clock.now(), quiet_from=quiet_from
        )

    async def _read(
        self,
        after: uuid.UUID | None,
        limit: int,
        only: Sequence[uuid.UUID] | None,
        metered_only: bool,
        *,
        settle_at: datetime | None,
        quiet_from: datetime | None,
    ) -> BatchRead:
        statement = _METERED_SQL[only is not None, metered_only, settle_at is not None]
        given: dict[str, Any] = {
            "after": after or _BEFORE_ANY_ID,
            "limit": limit,
            "settled_at": settle_at,
            "quiet_from": quiet_from,
            "ended_since": clock.now() - ENDED_LOOKBACK,
        }
        if only is not None:
            given["only"] = list(only)
        # Thousands of rows a batch: on the driver, where decoding them costs a fraction of
        # SQLAlchemy's result rows.
        rows = await (await driver_connection(self._session)).fetch(statement.sql, *statement.args(given))
        if not rows:
            return BatchRead([], read=0, last_id=None, settled=0)
        now = clock.now()

        def ended_at(status: str, at_period_end: bool, end: datetime | None) -> datetime | None:
            if status == "cancelled":
                return end
            # Still live here, but Stripe ends it at its period's end: past that, nothing counts.
            return end if at_period_end and end is not None and end <= now else None

        subscriptions = [
            MeteredSubscription(
                id=row[0],
                pay_per_use=row[1] == "pay_per_use",
                started_at=row[2],
                last_window_end=row[3],
                call_limit=row[4],
                current_period_start=row[5],
                current_period_end=row[6],
                ended_at=ended_at(row[7], row[8], row[9]),
                metered=bool(row[10]),
                overage_item=row[11] is not None,
                period_unsent=bool(row[12]),
                ready=bool(row[13]),
            )
            for row in rows
            if not row[14]  # quiet: the last one read comes back for its id alone
        ]
        return BatchRead(subscriptions, read=int(rows[0][16]), last_id=rows[-1][0], settled=int(rows[0][15]))

    async def count_metered(self, *, only: Sequence[uuid.UUID] | None = None) -> int:
        statement = _readable(select(func.count()).select_from(Subscription), only)
        return int((await self._session.execute(statement)).scalar_one())

    async def day_so_far(
        self, subscription_id: uuid.UUID, day_start: datetime, before: datetime
    ) -> tuple[int, int]:
        """Successful and failed calls of the windows of one day that end by `before`."""
        statement = select(
            func.coalesce(func.sum(UsageRecord.successful_calls), 0),
            func.coalesce(func.sum(UsageRecord.failed_calls), 0),
        ).where(
            UsageRecord.subscription_id == subscription_id,
            UsageRecord.window_start >= day_start,
            UsageRecord.window_end <= before,
        )
        row = (await self._session.execute(statement)).one()
        return int(row[0]), int(row[1])

    async def insert_records(self, rows: list[dict[str, Any]]) -> int:
        """Insert the windows not yet recorded (a rerun adds nothing); returns how many were new.
        Each row names a window's columns but its id, which the database gives (time-ordered).

        One statement per batch whatever its size: the rows travel as one array per column and
        are unnested by PostgreSQL (a VALUES list costs a bound parameter per cell), on the
        session's driver connection inside its transaction.
        """
        if not rows:
            return 0
        # A name it would not write (an `id`, a typo) is refused, never silently dropped: a row
        # names exactly the written columns when it has as many keys and none of them is missing.
        for row in rows:
            if len(row) != len(_RECORD_COLUMNS):
                raise _refuse(row)
        try:
            values = [[row[name] for row in rows] for name in _RECORD_COLUMNS]
        except KeyError:
            raise _refuse(next(row for row in rows if row.keys() != _WRITTEN)) from None
        created_at = clock.now()
        await self._share_settlements()
        try:
            async with self._session.begin_nested():  # a savepoint: a duplicate undoes only this
                status: str = await (await driver_connection(self._session)).execute(
                    _INSERT_RECORDS, *values, created_at
                )
        except asyncpg.UniqueViolationError:
            status = await (await driver_connection(self._session)).execute(
                _INSERT_NEW_RECORDS, *values, created_at
            )
        await self._unsettle(_earliest_ends((row["subscription_id"], row["window_end"]) for row in rows))
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def _share_settlements(self) -> None:
        await self._session.execute(_SHARE_SETTLEMENTS, {"key": _SETTLEMENT_LOCK})

    async def _unsettle(self, window_ends: dict[uuid.UUID, datetime]) -> None:
        """Un-settle the periods these windows (subscription -> the window's end) are billed in or before."""
        if window_ends:
            await (await driver_connection(self._session)).execute(
                _UNSETTLE, list(window_ends), list(window_ends.values())
            )

    async def lock_settlements(self) -> None:
        """Hold the settlement lock alone until the transaction ends: no window is recorded or
        re-queued meanwhile, so what this transaction reads of the windows stays true."""
        await self._session.execute(_LOCK_SETTLEMENTS, {"key": _SETTLEMENT_LOCK})

    async def period_calls(
        self, periods: Sequence[tuple[uuid.UUID, datetime, datetime]]
    ) -> dict[uuid.UUID, int]:
        """Recorded calls (quantity) per subscription billed in its own [start, end), one query
        for all (`period_calls_query`)."""
        return await self._period_calls(periods, None)

    async def period_overruns(
        self, periods: Sequence[tuple[uuid.UUID, datetime, datetime]], limits: Sequence[int]
    ) -> dict[uuid.UUID, int]:
        """`period_calls` of only the subscriptions whose calls exceed their limit (`limits`, one
        per period, in order): a batch's other subscriptions are compared in PostgreSQL and not
        sent back."""
        return await self._period_calls(periods, limits)

    async def _period_calls(
        self, periods: Sequence[tuple[uuid.UUID, datetime, datetime]], limits: Sequence[int] | None
    ) -> dict[uuid.UUID, int]:
        if not periods:
            return {}
        statement, args = period_calls_query(periods, limits)
        rows = await (await driver_connection(self._session)).fetch(statement.sql, *args)
        return {row[0]: row[1] for row in rows}  # (a comprehension costs less than dict(rows))

    async def draft_subscription(
        self, subscription_id: uuid.UUID, start: datetime | None, end: datetime | None
    ) -> tuple[Subscription | None, int | None]:
        """The subscription a draft invoice of the period [start, end) bills, locked as event
        handlers lock it (FOR NO KEY UPDATE), with the period's calls when the period is settled
        (None while not: the usage job has windows to record or send for it), in one statement.

        Settled: the period-close pass found every window billed in it recorded and sent, and
        the windows it saw still cover the period for the subscription as it is now (one that
        has since come to end with its period has a last, partial window billed in it)."""
        lock = {"key_share": True}
        if start is None or end is None:
            return await self._session.get(Subscription, subscription_id, with_for_update=lock), None
        statement = (
            select(Subscription, _settled_calls(end))
            .outerjoin(
                UsagePeriodSettlement,
                and_(
                    UsagePeriodSettlement.subscription_id == Subscription.id,
                    UsagePeriodSettlement.period_start == start,
                    UsagePeriodSettlement.period_end == end,
                ),
            )
            .where(Subscription.id == subscription_id)
            .with_for_update(key_share=True, of=Subscription)
        )
        row = (await self._session.execute(statement)).one_or_none()
        if row is None:
            return None, None
        subscription, calls = row
        return subscription, None if calls is None else int(calls)

    async def subscriptions(self, ids: Sequence[uuid.UUID]) -> list[Subscription]:
        if not ids:
            return []
        statement = select(Subscription).where(Subscription.id.in_(ids)).order_by(Subscription.id)
        return list((await self._session.execute(statement)).scalars().all())

    async def claim_pending(
        self,
        subscription_ids: Sequence[uuid.UUID],
        *,
        now: datetime,
        lease: timedelta,
        horizon: timedelta,
    ) -> tuple[list[Unreported], list[uuid.UUID], int]:
        """Claim the pending windows of these subscriptions for sending, marked as sent now.

        Returns those to send; those whose first send is older than `horizon` with no answer
        yet (quarantined here: Stripe may have counted them and forgotten the identifier, so
        only an operator may send them again); and how many another run is sending (sent less
        than `lease` ago), left alone.
        """
        # On the driver: the batch's ids travel as one array, encoded by asyncpg.
        arguments = _CLAIM_SQL.args({"ids": list(subscription_ids)})
        rows = await (await driver_connection(self._session)).fetch(_CLAIM_SQL.sql, *arguments)
        to_send: list[Unreported] = []
        expired: list[uuid.UUID] = []
        in_flight = 0
        for row in rows:
            first_sent, last_sent = row[8], row[9]
            if last_sent is not None and last_sent > now - lease:
                in_flight += 1
            elif first_sent is not None and first_sent <= now - horizon:
                expired.append(row[0])
            else:
                to_send.append(
                    Unreported(
                        id=row[0],
                        subscription_id=row[1],
                        api_id=row[2],
                        stripe_customer_id=str(row[3]),
                        quantity=row[4],
                        identifier=str(row[5]),
                        event_at=event_instant(row[6]),
                        attempt=row[7],
                    )
                )
        if to_send:
            await self._session.execute(
                update(UsageRecord)
                .where(UsageRecord.id.in_([w.id for w in to_send]))
                .values(
                    report_status="pending",
                    report_first_sent_at=func.coalesce(UsageRecord.report_first_sent_at, now),
                    report_last_sent_at=now,
                )
            )
        if expired:
            await self.quarantine(dict.fromkeys(expired, UNANSWERED), now)
        return to_send, expired, in_flight

    async def mark_accepted(self, record_ids: Sequence[uuid.UUID], at: datetime) -> None:
        if record_ids:
            await self._session.execute(
                update(UsageRecord)
                .where(UsageRecord.id.in_(record_ids), _SENDABLE)
                .values(report_status="accepted", reported_at=at, report_last_sent_at=None)
            )

    async def quarantine(self, errors: dict[uuid.UUID, str], at: datetime) -> None:
        for record_id, error in errors.items():
            await self._session.execute(
                update(UsageRecord)
                .where(UsageRecord.id == record_id, _SENDABLE)
                .values(report_status="quarantined", report_error=error[:2000], quarantined_at=at)
            )

    async def release(self, record_ids: Sequence[uuid.UUID]) -> None:
        """Sent and answered with a passing failure: the next run sends them again (same key)."""
        if record_ids:
            await self._session.execute(
                update(UsageRecord)
                .where(UsageRecord.id.in_(record_ids), _SENDABLE)
                .values(report_status="pending", report_last_sent_at=None)
            )

    async def quarantined(self, subscription_id: uuid.UUID | None = None) -> list[Quarantined]:
        statement = (
            select(
                UsageRecord.id,
                UsageRecord.subscription_id,
                UsageRecord.window_start,
                UsageRecord.window_end,
                UsageRecord.quantity,
                UsageRecord.meter_event_identifier,
                UsageRecord.report_error,
                UsageRecord.quarantined_at,
            )
            .where(UsageRecord.report_status == "quarantined")
            .order_by(UsageRecord.quarantined_at, UsageRecord.window_start)
        )
        if subscription_id is not None:
            statement = statement.where(UsageRecord.subscription_id == subscription_id)
        return [
            Quarantined(
                id=row[0],
                subscription_id=row[1],
                window_start=row[2],
                window_end=row[3],
                quantity=row[4],
                identifier=str(row[5]),
                error=row[6],
                quarantined_at=row[7],
            )
            for row in (await self._session.execute(statement)).all()
        ]

    async def requeue(
        self, *, window_id: uuid.UUID | None = None, subscription_id: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Quarantined windows back to pending under a new attempt (a new Stripe idempotency key);
        returns the subscriptions they belong to."""
        condition = (
            UsageRecord.id == window_id
            if window_id is not None
            else UsageRecord.subscription_id == subscription_id
        )
        await self._share_settlements()
        result = await self._session.execute(
            update(UsageRecord)
            .where(condition, UsageRecord.report_status == "quarantined")
            .values(
                report_status="pending",
                report_attempt=UsageRecord.report_attempt + 1,
                report_first_sent_at=None,
                report_last_sent_at=None,
                report_error=None,
                quarantined_at=None,
            )
            .returning(UsageRecord.subscription_id, UsageRecord.window_end)
        )
        earliest = _earliest_ends((row[0], row[1]) for row in result.all())
        await self._unsettle(earliest)
        return sorted(earliest)
