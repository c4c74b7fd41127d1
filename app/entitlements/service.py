"""Check and track: may this key make this call now, and count the calls made.

The hot path is one script call (the counters), plus a read of the snapshot when this process's
copy of it has aged out; the database is read only when a snapshot is missing. When Redis cannot
answer within its timeout the configured policy answers instead (fail open by default, fail
closed when set), with a metric and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import orjson
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.auth import Principal
from app.config import Settings
from app.consumers.service import consumer_id_for
from app.db.packed_redis import EntitlementsRedis
from app.db.unit_of_work import unit_of_work
from app.entitlements import keys
from app.entitlements.cache import MISSING, EntitlementCache, schedule_refresh
from app.entitlements.counters import Counters, Limits, Outcome
from app.entitlements.metrics import CHECKS, REDIS_DEGRADED
from app.entitlements.repository import EntitlementRepository
from app.entitlements.schemas import (
    CheckRequest,
    EntitlementList,
    EntitlementOut,
    SpendCapOut,
    TrackRequest,
)
from app.entitlements.snapshot import CALLABLE, Entitlement
from app.errors import InvalidField, NotFound, ServiceUnavailable
from app.events.publisher import publish
from app.events.types import QUOTA_EXHAUSTED, USAGE_THRESHOLD_REACHED
from app.periods import usage_period

log = logging.getLogger(__name__)

T = TypeVar("T")
# Usage alerts: the share of the included calls (or of the spend cap) that raises one, once a period.
THRESHOLDS = (80, 100)
SNAPSHOT_PAGE_MAX = 500
# At most this many snapshots are kept in a process (ENTITLEMENTS_LOCAL_SNAPSHOT_SECONDS each).
LOCAL_SNAPSHOT_COPIES = 100_000


class RedisUnavailable(ServiceUnavailable):
    """Redis did not answer within the entitlement timeout."""

    def __init__(self, reason: str) -> None:
        super().__init__("Entitlement counters are unavailable, try again", code="counters_unavailable")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Alert:
    """A usage fact for the marketplace, raised by the one check that crossed it."""

    type: str
    subscription_id: str
    dedupe_key: str
    payload: dict[str, object]


@dataclass(frozen=True, slots=True)
class TrackAnswer:
    """A track batch's answer (`TrackResponse` in the API), as JSON-ready data."""

    tracked: int
    results: list[dict[str, object]]

    def json(self) -> bytes:
        return orjson.dumps({"tracked": self.tracked, "results": self.results})


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    """A check's answer (`CheckResult` in the API, the same fields in its order), serialized once
    by orjson to the bytes the schema's own serializer would give."""

    allowed: bool
    reason: str
    subscription_id: str | None = None
    remaining: int | None = None
    limit: int | None = None
    used: int | None = None
    reset_at: datetime | None = None
    overage: bool = False
    period_start: datetime | None = None
    period_end: datetime | None = None
    degraded: bool = False

    def json(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_UTC_Z)


def _moment(epoch: int | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, tz=UTC) if epoch is not None else None


def current_period(entitlement: Entitlement, now: datetime) -> tuple[datetime, datetime]:
    """The period whose calls count now: the subscription's own, rolled on monthly if it has passed."""
    return usage_period(
        _moment(entitlement.current_period_start),
        _moment(entitlement.current_period_end),
        datetime.fromtimestamp(entitlement.started_at, tz=UTC),
        now,
    )


def current_epochs(entitlement: Entitlement, now: datetime, now_epoch: int) -> tuple[int, int]:
    """`current_period` in unix seconds: the snapshot's own period as is while it holds."""
    start, end = entitlement.current_period_start, entitlement.current_period_end
    if start is not None and end is not None and start <= now_epoch < end:
        return start, end
    period = current_period(entitlement, now)
    return int(period[0].timestamp()), int(period[1].timestamp())


def limits_of(entitlement: Entitlement) -> Limits:
    return Limits(
        hard=entitlement.hard_limit,
        cap_calls=entitlement.cap_calls(),
        per_minute=entitlement.rate_limit_per_minute,
        per_day=entitlement.rate_limit_per_day,
        per_month=entitlement.rate_limit_per_month,
    )


def refusal(entitlement: Entitlement | None) -> str | None:
    """The reason calls are refused whatever the counters say, if any."""
    if entitlement is None:
        return "no_subscription"
    if entitlement.status not in CALLABLE:
        return "not_active"
    if entitlement.suspended:
        return "suspended"
    return None


def threshold_marks(limit: int) -> tuple[int, ...]:
    """The counts at which THRESHOLDS of `limit` are reached."""
    return tuple(math.ceil(limit * percent / 100) for percent in THRESHOLDS)


def crossed_alerts(entitlement: Entitlement, period: tuple[int, int], before: int, after: int) -> list[Alert]:
    """The usage thresholds that the calls from `before` to `after` crossed (each once a period);
    `period` in unix seconds."""
    alerts: list[Alert] = []
    bases = [("included_calls", entitlement.call_limit), ("spend_cap", entitlement.cap_calls())]
    start, end = (datetime.fromtimestamp(epoch, tz=UTC) for epoch in period)
    for basis, limit in bases:
        if not limit:
            continue
        for percent, mark in zip(THRESHOLDS, threshold_marks(limit), strict=True):
            if before < mark <= after:
                alerts.append(
                    Alert(
                        type=USAGE_THRESHOLD_REACHED,
                        subscription_id=entitlement.subscription_id,
                        dedupe_key=(
                            f"usage.threshold_reached:{entitlement.subscription_id}:"
                            f"{int(start.timestamp())}:{basis}:{percent}"
                        ),
                        payload={
                            "api_id": entitlement.api_id,
                            "consumer_id": entitlement.consumer_id,
                            "basis": basis,
                            "threshold_percent": percent,
                            "limit": limit,
                            "used": after,
                            "period_start": start.isoformat(),
                            "period_end": end.isoformat(),
                        },
                    )
                )
    return alerts


def exhausted_alert(entitlement: Entitlement, period: tuple[datetime, datetime], used: int) -> Alert:
    start, end = period
    return Alert(
        type=QUOTA_EXHAUSTED,
        subscription_id=entitlement.subscription_id,
        dedupe_key=f"quota.exhausted:{entitlement.subscription_id}:{int(start.timestamp())}",
        payload={
            "api_id": entitlement.api_id,
            "consumer_id": entitlement.consumer_id,
            "call_limit": entitlement.call_limit,
            "used": used,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
        },
    )


class EntitlementService:
    def __init__(
        self, redis: EntitlementsRedis, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> None:
        self._redis = redis
        self._sessionmaker = sessionmaker
        self._timeout = settings.entitlements_redis_timeout_seconds
        self._fail_open = settings.entitlements_redis_policy == "fail_open"
        self._policy = settings.entitlements_redis_policy
        self._counters = Counters(redis, redis.pipelined)
        self._cache = EntitlementCache(redis)
        # Recent snapshots read by this process: a check or a track batch then costs one Redis
        # round trip (the counters); changes reach Redis at once and this copy within its age.
        self._local_seconds = settings.entitlements_local_snapshot_seconds
        self._recent: dict[str, tuple[float, Entitlement]] = {}
        # What each snapshot's terms give (limits, alert marks), computed once per snapshot read.
        self._terms: dict[int, tuple[Entitlement, Limits, tuple[int, ...]]] = {}
        # Snapshot keys by the subscription id's integer (a UUID formats and hashes in Python).
        self._snapshot_keys: dict[int, str] = {}

    def _terms_of(self, entitlement: Entitlement) -> tuple[Limits, tuple[int, ...]]:
        found = self._terms.get(id(entitlement))
        if found is None or found[0] is not entitlement:  # held here, so its id is not reused
            if len(self._terms) >= LOCAL_SNAPSHOT_COPIES:
                self._terms.clear()
            limit = entitlement.call_limit
            found = (entitlement, limits_of(entitlement), threshold_marks(limit) if limit else ())
            if self._local_seconds > 0:  # else each check reads a new snapshot: nothing to reuse
                self._terms[id(entitlement)] = found
        return found[1], found[2]

    def _local(self, key: str, moment: float) -> Entitlement | None:
        recent = self._recent.get(key)
        if recent is not None and moment - recent[0] < self._local_seconds:
            return recent[1]
        return None

    def _keep(self, key: str, moment: float, entitlement: Entitlement) -> None:
        if self._local_seconds <= 0:
            return
        if len(self._recent) >= LOCAL_SNAPSHOT_COPIES:
            self._recent.clear()
        self._recent[key] = (moment, entitlement)

    async def _redis_call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc

    @staticmethod
    async def _pipelined(pending: Awaitable[T]) -> T:
        """A call of the pipelined client: its batch's timer bounds it, no timer of its own."""
        try:
            return await pending
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc

    def _degraded(self, what: str, error: RedisUnavailable) -> None:
        REDIS_DEGRADED.labels(policy=self._policy).inc()
        log.warning(
            "entitlements: redis unavailable, answering by policy",
            extra={"policy": self._policy, "operation": what, "error": error.reason},
        )

    async def _load(self, *, subscription_id: uuid.UUID | None, api_key_id: str | None) -> Entitlement | None:
        """This process's recent copy, else the cached snapshot, else the ledger's (then cached)."""
        cache_key = self._cache_key(subscription_id, api_key_id)
        moment = time.monotonic()
        local = self._local(cache_key, moment)
        if local is not None:
            return local
        # Pipelined: when this process's copy of a busy key ages out, every concurrent check misses
        # it at once; their reads share one write instead of each taking a pooled connection.
        raw: bytes | None = await self._pipelined(self._redis.pipelined.call("GET", cache_key))
        if raw == MISSING:
            return None
        if raw is not None:
            cached = Entitlement.loads(raw)
            if cached is not None:
                self._keep(cache_key, moment, cached)
                return cached
        async with self._sessionmaker() as session:
            repo = EntitlementRepository(session)
            if subscription_id is not None:
                found = await repo.by_subscription(subscription_id)
            else:
                assert api_key_id is not None  # noqa: S101
                found = await repo.by_api_key(api_key_id)
        if found is not None:
            await self._redis_call(lambda: self._cache.put(found))
            self._keep(cache_key, moment, found)
        elif api_key_id is not None:
            await self._redis_call(lambda: self._cache.remember_missing_key(api_key_id))
        return found

    async def check(self, request: CheckRequest) -> tuple[CheckAnswer, list[Alert]]:
        """May these calls be made now? With `track`, count them when they may (all or none)."""
        try:
            entitlement = await self._load(
                subscription_id=request.subscription_id, api_key_id=request.api_key_id
            )
            if entitlement is not None and entitlement.api_id != request.api_id:
                entitlement = None
            refused = refusal(entitlement)
            if entitlement is None or refused is not None:
                CHECKS.labels(reason=refused or "no_subscription").inc()
                return CheckAnswer(
                    allowed=False,
                    reason=refused or "no_subscription",
                    subscription_id=entitlement.subscription_id if entitlement else None,
                ), []
            now = clock.now()
            period = current_period(entitlement, now)
            epochs = (int(period[0].timestamp()), int(period[1].timestamp()))
            n = request.track or 1
            outcome = await self._pipelined(
                self._counters.check(
                    entitlement.subscription_id,
                    epochs,
                    self._terms_of(entitlement)[0],
                    n,
                    now=int(now.timestamp()),
                    count=request.track is not None,
                )
            )
        except RedisUnavailable as error:
            self._degraded("check", error)
            reason = "ok" if self._fail_open else "unavailable"
            CHECKS.labels(reason=reason).inc()
            return CheckAnswer(allowed=self._fail_open, reason=reason, degraded=True), []
        CHECKS.labels(reason=outcome.reason).inc()
        alerts: list[Alert] = []
        if outcome.allowed and request.track is not None:
            alerts = crossed_alerts(entitlement, epochs, outcome.used - n, outcome.used)
        if outcome.first_refusal:
            alerts.append(exhausted_alert(entitlement, period, outcome.used))
        return self._result(entitlement, period, outcome, counted=request.track or 0), alerts

    @staticmethod
    def _result(
        entitlement: Entitlement, period: tuple[datetime, datetime], outcome: Outcome, *, counted: int
    ) -> CheckAnswer:
        start, end = period
        limit = entitlement.call_limit
        remaining = max(limit - outcome.used, 0) if limit is not None else None
        reset_at: datetime | None = end
        cap_calls = entitlement.cap_calls()
        if outcome.reason == "spend_cap_reached" or (limit is None and cap_calls is not None):
            limit = cap_calls
            remaining = max((cap_calls or 0) - outcome.used, 0)
        if outcome.reason == "rate_limited" and outcome.window is not None:
            window_limit = limits_of(entitlement).window_limit(outcome.window) or 0
            limit = window_limit
            remaining = max(window_limit - outcome.window_count, 0)
            reset_at = _moment(outcome.window_end)
        overage = (
            outcome.allowed
            and entitlement.overage
            and entitlement.call_limit is not None
            and outcome.used + (0 if counted else 1) > entitlement.call_limit
        )
        return CheckAnswer(
            allowed=outcome.allowed,
            reason=outcome.reason,
            subscription_id=entitlement.subscription_id,
            remaining=remaining,
            limit=limit,
            used=outcome.used,
            reset_at=reset_at,
            overage=overage,
            period_start=start,
            period_end=end,
        )

    async def track(self, request: TrackRequest) -> tuple[TrackAnswer, list[Alert]]:
        """Count calls the gateway already let through (from its own cache), in one batch."""
        try:
            entitlements = await self._track_snapshots(request)
            now = clock.now()
            now_epoch = int(now.timestamp())
            batch: list[tuple[str, tuple[int, int], Limits, int]] = []
            periods: list[tuple[int, int]] = []
            marks: list[tuple[int, ...]] = []
            for item, entitlement in zip(request.calls, entitlements, strict=True):
                if entitlement is None:
                    continue
                period = current_epochs(entitlement, now, now_epoch)
                periods.append(period)
                limits, item_marks = self._terms_of(entitlement)
                marks.append(item_marks)
                batch.append((entitlement.subscription_id, period, limits, item.count))
            outcomes = await self._pipelined(self._counters.track_many(batch, now=now_epoch))
        except RedisUnavailable as error:
            self._degraded("track", error)
            raise
        # Plain data in the shape of TrackResult (every field computed here), serialized once.
        results: list[dict[str, object]] = []
        alerts: list[Alert] = []
        counted = iter(zip(outcomes, periods, marks, strict=True))
        tracked = 0
        for item, entitlement in zip(request.calls, entitlements, strict=True):
            if entitlement is None:
                results.append(
                    {
                        "subscription_id": item.subscription_id,
                        "api_id": item.api_id,
                        "counted": 0,
                        "used": None,
                        "remaining": None,
                        "overage": False,
                    }
                )
                continue
            used, period, item_marks = next(counted)
            tracked += item.count
            limit = entitlement.call_limit
            results.append(
                {
                    "subscription_id": item.subscription_id or entitlement.subscription_id,
                    "api_id": item.api_id,
                    "counted": item.count,
                    "used": used,
                    "remaining": max(limit - used, 0) if limit is not None else None,
                    "overage": entitlement.overage and limit is not None and used > limit,
                }
            )
            if entitlement.monthly_spend_cap is not None or any(
                used - item.count < mark <= used for mark in item_marks
            ):
                alerts.extend(crossed_alerts(entitlement, period, used - item.count, used))
        return TrackAnswer(tracked=tracked, results=results), alerts

    async def _track_snapshots(self, request: TrackRequest) -> list[Entitlement | None]:
        """The batch's snapshots: this process's recent copies, else one pipelined read from Redis,
        else the ledger."""
        moment = time.monotonic()
        found: dict[str, Entitlement | None] = {}
        wanted: list[tuple[str, uuid.UUID | None, str | None]] = []
        cache_keys = [self._cache_key(item.subscription_id, item.api_key_id) for item in request.calls]
        for item, key in zip(request.calls, cache_keys, strict=True):
            recent = self._local(key, moment)
            if recent is not None:
                found[key] = recent
            elif key not in found:
                found[key] = None
                wanted.append((key, item.subscription_id, item.api_key_id))
        if wanted:
            raws: list[bytes | None] = await self._pipelined(
                self._redis.pipelined.call_many([("GET", w[0]) for w in wanted])
            )
            for (key, subscription_id, api_key_id), raw in zip(wanted, raws, strict=True):
                entitlement = Entitlement.loads(raw) if raw not in (None, MISSING) else None
                if entitlement is None and raw != MISSING:
                    entitlement = await self._load(subscription_id=subscription_id, api_key_id=api_key_id)
                found[key] = entitlement
                if entitlement is not None:
                    self._keep(key, moment, entitlement)
        entitlements: list[Entitlement | None] = []
        for item, key in zip(request.calls, cache_keys, strict=True):
            entitlement = found[key]
            entitlements.append(entitlement if entitlement and entitlement.api_id == item.api_id else None)
        return entitlements

    def _cache_key(self, subscription_id: uuid.UUID | None, api_key_id: str | None) -> str:
        if subscription_id is not None:
            number = subscription_id.int
            key = self._snapshot_keys.get(number)
            if key is None:
                if len(self._snapshot_keys) >= LOCAL_SNAPSHOT_COPIES:
                    self._snapshot_keys.clear()
                key = self._snapshot_keys[number] = keys.snapshot_key(subscription_id)
            return key
        assert api_key_id is not None  # noqa: S101  (the schema sends exactly one)
        return keys.api_key_index(api_key_id)

    async def snapshot_page(
        self, session: AsyncSession, *, api_id: str | None, after: uuid.UUID | None, limit: int
    ) -> EntitlementList:
        """Live subscriptions' entitlements with their period, limits and count so far (cache warm-up)."""
        limit = min(limit, SNAPSHOT_PAGE_MAX)
        rows = await EntitlementRepository(session).live_page(api_id=api_id, after=after, limit=limit + 1)
        page = rows[:limit]
        now = clock.now()
        periods = [current_period(e, now) for e in page]
        try:
            used = await self._redis_call(
                lambda: self._counters.used(
                    [(e.subscription_id, int(p[0].timestamp())) for e, p in zip(page, periods, strict=True)]
                )
            )
        except RedisUnavailable as error:
            self._degraded("snapshot", error)
            raise
        out = [
            EntitlementOut(
                subscription_id=uuid.UUID(e.subscription_id),
                consumer_id=uuid.UUID(e.consumer_id),
                api_id=e.api_id,
                api_key_id=e.api_key_id,
                status=e.status,
                suspended=e.suspended,
                allowed=refusal(e) is None,
                plan_id=uuid.UUID(e.plan_id),
                plan_version=e.plan_version,
                plan_type=e.plan_type,
                currency=e.currency,
                call_limit=e.call_limit,
                hard_limit=e.hard_limit is not None,
                overage_price_per_call=e.overage_price_per_call,
                monthly_spend_cap=e.monthly_spend_cap,
                spend_cap_calls=e.cap_calls(),
                rate_limit_per_minute=e.rate_limit_per_minute,
                rate_limit_per_day=e.rate_limit_per_day,
                rate_limit_per_month=e.rate_limit_per_month,
                period_start=p[0],
                period_end=p[1],
                used=u,
            )
            for e, p, u in zip(page, periods, used, strict=True)
        ]
        next_cursor = page[-1].subscription_id if len(rows) > limit else None
        return EntitlementList(entitlements=out, next_cursor=next_cursor)


async def publish_alerts(
    sessionmaker: async_sessionmaker[AsyncSession], redis: ArqRedis | None, alerts: list[Alert]
) -> None:
    """Store the usage alerts a check raised as marketplace events (each once: dedupe key)."""
    async with unit_of_work(sessionmaker) as session:
        for alert in alerts:
            await publish(
                session,
                redis,
                type=alert.type,
                dedupe_key=alert.dedupe_key,
                subscription_id=uuid.UUID(alert.subscription_id),
                payload=alert.payload,
            )


class SpendCapService:
    def __init__(self, session: AsyncSession, redis: Redis) -> None:
        self._session = session
        self._redis = redis
        self._repo = EntitlementRepository(session)

    async def set_cap(self, principal: Principal, subscription_id: uuid.UUID, cap: int | None) -> SpendCapOut:
        """Set (or clear, with None) the consumer's monthly cap on usage-priced spend; the next
        check follows it."""
        subscription = await self._repo.get_subscription(subscription_id, for_update=True)
        if subscription is None or subscription.consumer_id != consumer_id_for(principal.user_id):
            raise NotFound("Subscription not found")
        entitlement = await self._repo.by_subscription(subscription_id)
        assert entitlement is not None  # noqa: S101  (the row exists)
        if cap is not None and entitlement.usage_unit_price() is None:
            raise InvalidField("monthly_spend_cap", "this plan has no pay-per-use or overage price to cap")
        subscription.monthly_spend_cap = cap
        await self._session.flush()
        schedule_refresh(self._session, self._redis, subscription.id)
        period = current_period(entitlement, clock.now())
        estimated: int | None
        try:
            async with asyncio.timeout(1.0):
                used = await Counters(self._redis).used(
                    [(entitlement.subscription_id, int(period[0].timestamp()))]
                )
            estimated = entitlement.usage_spend(used[0])
        except (RedisError, OSError, TimeoutError):
            estimated = None
        return SpendCapOut(
            subscription_id=subscription.id,
            monthly_spend_cap=cap,
            currency=entitlement.currency,
            estimated_usage_amount=estimated,
        )
