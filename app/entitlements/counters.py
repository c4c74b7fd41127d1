"""Exact counters per subscription and period, and the plan's rate windows, moved by one Lua script.

A script runs atomically in Redis, so however many checks arrive at once, each sees the counts
its predecessors left and no limit is passed: 10,000 concurrent `track: 1` checks with 5,000
calls left allow exactly 5,000. Windows are fixed UTC windows (minute, day, calendar month);
the period counter is keyed by the subscription's own period start, so it starts from zero at
each period boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.db.packed_redis import Arg, PipelinedRedis
from app.entitlements import keys

NONE = -1
# Counters outlive their period by this much, so late tracks and reconciliation still find them.
PERIOD_GRACE_SECONDS = 7 * 86400
REASONS = {0: "ok", 1: "quota_exhausted", 2: "spend_cap_reached", 3: "rate_limited"}
WINDOWS = ("minute", "day", "month")
# Track batches reuse each subscription's script keys within a minute (at most this many kept).
TRACK_MEMO_SIZE = 100_000

COUNT_SCRIPT = """\
-- Check and count calls of one subscription atomically (all keys share its hash tag).
-- KEYS: 1 period counter, 2 minute window, 3 day window, 4 month window, 5 "exhausted" flag
-- ARGV: 1 n, 2 count (1: add n when allowed), 3 enforce (1: refuse over a limit; 0: count anyway),
--       4 hard limit (-1: none), 5 calls the spend cap allows (-1: none), 6 period ttl (s),
--       7..9 minute/day/month limits (-1: none), 10..12 their ttls (s)
-- Returns {allowed, reason, period count, window index, window count, first refusal}
-- reason: 0 ok, 1 quota exhausted, 2 spend cap reached, 3 rate limited
local n = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[3] == '1' then
  local hard = tonumber(ARGV[4])
  if hard >= 0 and used + n > hard then
    local first = redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[6])
    return {0, 1, used, 0, 0, first and 1 or 0}
  end
  local cap = tonumber(ARGV[5])
  if cap >= 0 and used + n > cap then
    return {0, 2, used, 0, 0, 0}
  end
  for i = 2, 4 do
    local limit = tonumber(ARGV[5 + i])
    if limit >= 0 then
      local count = tonumber(redis.call('GET', KEYS[i]) or '0')
      if count + n > limit then
        return {0, 3, used, i - 1, count, 0}
      end
    end
  end
end
-- A counter's expiry is fixed by its period or window end, so it is set once, by the call that
-- creates the counter (INCRBY answers n).
if ARGV[2] == '1' and n > 0 then
  used = redis.call('INCRBY', KEYS[1], n)
  if used == n then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  for i = 2, 4 do
    if tonumber(ARGV[5 + i]) >= 0 then
      if redis.call('INCRBY', KEYS[i], n) == n then redis.call('EXPIRE', KEYS[i], ARGV[8 + i]) end
    end
  end
end
return {1, 0, used, 0, 0, 0}
"""

TRACK_SCRIPT = """\
-- Count n calls on each key (the period counter, then the limited rate windows), whatever the
-- limits. KEYS: the counters. ARGV: 1 n, then one ttl (s) per key, set by the call that creates
-- the counter (its expiry is fixed by its period or window end). Relative, not EXPIREAT: business
-- time (a test clock) need not be Redis's. Returns the period count.
local n = tonumber(ARGV[1])
local used = redis.call('INCRBY', KEYS[1], n)
if used == n then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
for i = 2, #KEYS do
  if redis.call('INCRBY', KEYS[i], n) == n then redis.call('EXPIRE', KEYS[i], ARGV[i + 1]) end
end
return used
"""

RAISE_SCRIPT = """\
-- Raise a period counter to an authoritative count; never lower it (calls allowed stay counted).
-- KEYS: 1 period counter.  ARGV: 1 count, 2 ttl (s).  Returns the counter after.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = tonumber(ARGV[1])
if current < target then
  redis.call('SET', KEYS[1], target, 'EX', ARGV[2])
  return target
end
return current
"""


def window_bounds(window: str, now: int) -> tuple[int, int]:
    """The fixed UTC window containing `now` (unix seconds): its bucket id and its end."""
    if window == "minute":
        return now // 60, (now // 60 + 1) * 60
    if window == "day":
        return now // 86400, (now // 86400 + 1) * 86400
    moment = datetime.fromtimestamp(now, tz=UTC)
    bucket = moment.year * 12 + moment.month - 1
    year, month = divmod(bucket + 1, 12)
    return bucket, int(datetime(year, month + 1, 1, tzinfo=UTC).timestamp())


@dataclass(frozen=True, slots=True)
class Limits:
    hard: int | None
    cap_calls: int | None
    per_minute: int | None
    per_day: int | None
    per_month: int | None

    def window_limit(self, window: str) -> int | None:
        return {"minute": self.per_minute, "day": self.per_day, "month": self.per_month}[window]


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    reason: str
    used: int
    # Set when rate limited: which window refused, its count and its end (unix seconds).
    window: str | None
    window_count: int
    window_end: int | None
    first_refusal: bool


# One subscription's counters in one period (a batch holds one snapshot, so one set of limits).
TrackGroup = tuple[str, tuple[int, int]]


def _ttl(until: int, now: int) -> int:
    return max(until - now, 1) + 60


class Counters:
    """`check` and `track_many` (every gateway call) go through `pipelined`; the rest through redis-py."""

    def __init__(self, redis: Redis, pipelined: PipelinedRedis | None = None) -> None:
        self._redis = redis
        self._pipelined = pipelined
        self._count: AsyncScript = redis.register_script(COUNT_SCRIPT)
        self._raise: AsyncScript = redis.register_script(RAISE_SCRIPT)
        self._track: AsyncScript = redis.register_script(TRACK_SCRIPT)
        self._track_memo: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[int, ...]]] = {}
        self._track_minute = -1

    def _arguments(
        self,
        subscription_id: str,
        period: tuple[int, int],
        limits: Limits,
        n: int,
        *,
        now: int,
        count: bool,
        enforce: bool,
    ) -> tuple[list[str], list[Any], dict[str, int]]:
        start, end = period
        window_keys: list[str] = []
        limits_args: list[int] = []
        ttls: list[int] = []
        ends: dict[str, int] = {}
        for window in WINDOWS:
            bucket, window_end = window_bounds(window, now)
            ends[window] = window_end
            window_keys.append(keys.window_counter(subscription_id, window, bucket))
            limit = limits.window_limit(window)
            limits_args.append(NONE if limit is None else limit)
            ttls.append(_ttl(window_end, now))
        key_list = [
            keys.period_counter(subscription_id, start),
            *window_keys,
            keys.exhausted_flag(subscription_id, start),
        ]
        args: list[Any] = [
            n,
            1 if count else 0,
            1 if enforce else 0,
            NONE if limits.hard is None else limits.hard,
            NONE if limits.cap_calls is None else limits.cap_calls,
            _ttl(end + PERIOD_GRACE_SECONDS, now),
            *limits_args,
            *ttls,
        ]
        return key_list, args, ends

    @staticmethod
    def _outcome(result: list[int], ends: dict[str, int]) -> Outcome:
        allowed, reason, used, window_index, window_count, first = (int(v) for v in result)
        window = WINDOWS[window_index - 1] if reason == 3 else None
        return Outcome(
            allowed=bool(allowed),
            reason=REASONS[reason],
            used=used,
            window=window,
            window_count=window_count,
            window_end=ends[window] if window else None,
            first_refusal=bool(first),
        )

    async def check(
        self,
        subscription_id: str,
        period: tuple[int, int],
        limits: Limits,
        n: int,
        *,
        now: int,
        count: bool,
    ) -> Outcome:
        """Whether `n` more calls fit every limit; with `count`, count them (all or none)."""
        key_list, args, ends = self._arguments(
            subscription_id, period, limits, n, now=now, count=count, enforce=True
        )
        script = ("EVALSHA", self._count.sha, len(key_list), *key_list, *args)
        try:
            result = await self._hot.call(*script)
        except NoScriptError:
            await self._hot.call("SCRIPT", "LOAD", COUNT_SCRIPT)
            result = await self._hot.call(*script)
        return self._outcome(result, ends)

    @property
    def _hot(self) -> PipelinedRedis:
        if self._pipelined is None:
            raise RuntimeError("check and track count through the entitlement client's pipelined calls")
        return self._pipelined

    def _track_keys(
        self, subscription_id: str, period: tuple[int, int], limits: Limits, now: int
    ) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        """The script's call up to its keys (with their number) and the ends they expire after, for one
        subscription and period, reused within the minute: they change only with the minute window."""
        minute = now // 60
        if minute != self._track_minute or len(self._track_memo) >= TRACK_MEMO_SIZE:
            self._track_memo.clear()
            self._track_minute = minute
        # The keys depend only on which windows are limited, not on the limits themselves.
        memo_key = (
            subscription_id,
            period,
            limits.per_minute is None,
            limits.per_day is None,
            limits.per_month is None,
        )
        found = self._track_memo.get(memo_key)
        if found is None:
            start, end = period
            counter_keys = [keys.period_counter(subscription_id, start)]
            ends = [end + PERIOD_GRACE_SECONDS]
            for window in WINDOWS:
                if limits.window_limit(window) is not None:
                    bucket, window_end = window_bounds(window, now)
                    counter_keys.append(keys.window_counter(subscription_id, window, bucket))
                    ends.append(window_end)
            found = (("EVALSHA", self._track.sha, len(counter_keys), *counter_keys), tuple(ends))
            self._track_memo[memo_key] = found
        return found

    async def track_many(
        self, items: list[tuple[str, tuple[int, int], Limits, int]], *, now: int
    ) -> list[int]:
        """Count calls the gateway already let through, whatever the limits; the period counts after.

        One write of small script calls, one per subscription (its keys share the
        subscription's slot, so this works on Redis Cluster): a batch naming a subscription
        several times counts it once with the sum. A Redis that lost the script gets it again
        and the batch is resent (no command of it ran).
        """
        grouped: dict[TrackGroup, tuple[Limits, int]] = {}
        for subscription_id, period, limits, n in items:
            group = (subscription_id, period)
            counted = grouped.get(group)
            grouped[group] = (limits, n if counted is None else counted[1] + n)
        commands: list[tuple[Arg, ...]] = []
        for (subscription_id, period), (limits, n) in grouped.items():
            head, ends = self._track_keys(subscription_id, period, limits, now)
            commands.append((*head, n, *[_ttl(until, now) for until in ends]))
        for attempt in range(2):
            try:
                results = await self._hot.call_many(commands)
                if len(grouped) == len(items):  # no subscription twice: each result is its item's
                    return [int(r) for r in results]
                after = {group: int(r) for group, r in zip(grouped, results, strict=True)}
                # Each item's period count after its own calls, in the batch's order.
                pending = {group: after[group] - n for group, (_limits, n) in grouped.items()}
                counts: list[int] = []
                for subscription_id, period, _limits, n in items:
                    group = (subscription_id, period)
                    pending[group] += n
                    counts.append(pending[group])
                return counts
            except NoScriptError:
                if attempt:
                    raise
                await self._hot.call("SCRIPT", "LOAD", TRACK_SCRIPT)
        raise AssertionError("unreachable")  # pragma: no cover

    async def used(self, items: list[tuple[str, int]]) -> list[int]:
        """The period counts of (subscription, period start) pairs."""
        if not items:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for subscription_id, start in items:
                pipe.get(keys.period_counter(subscription_id, start))
            values = await pipe.execute()
        return [int(v or 0) for v in values]

    async def raise_to(self, items: list[tuple[str, tuple[int, int], int]], *, now: int) -> list[int]:
        """Raise each period counter to at least the given count (never lower it)."""
        if not items:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for subscription_id, (start, end), calls in items:
                await self._raise(
                    keys=[keys.period_counter(subscription_id, start)],
                    args=[calls, _ttl(end + PERIOD_GRACE_SECONDS, now)],
                    client=pipe,
                )
            results = await pipe.execute()
        return [int(v) for v in results]
