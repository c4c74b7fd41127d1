from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.stripe.base import StripeRateLimited

log = logging.getLogger(__name__)
T = TypeVar("T")

# After a 429: wait BACKOFF_BASE * 2**attempt seconds (at most BACKOFF_CAP, jittered, at least what
# Stripe's Retry-After asks), halve the pace, and give up after MAX_ATTEMPTS tries of one call.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MAX_ATTEMPTS = 8
# Each call that goes through wins back this share of the configured pace (additive increase),
# down to at most a tenth of it after 429s (multiplicative decrease).
RECOVERY = 0.05
FLOOR = 0.1


class RateLimiter:
    """Spaces calls evenly at `per_second`, so bulk work stays under Stripe's rate limit.

    `wait()` reserves the next slot. `call()` also runs the call and, when Stripe answers 429
    anyway (a lowered limit, another client on the account), backs off for every caller at once:
    nobody starts a call before the backoff ends, the pace halves, and it climbs back to
    `per_second` as calls go through again (AIMD, as TCP does).
    """

    def __init__(self, per_second: float) -> None:
        self._max = float(per_second)
        self._rate = self._max
        self._next_at = time.monotonic()
        self._paused_until = 0.0
        self.rate_limited = 0  # 429s seen

    @property
    def per_second(self) -> float:
        """The pace now: the configured one, or less while recovering from 429s."""
        return self._rate

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            slot = max(now, self._next_at)
            self._next_at = slot + 1.0 / self._rate
            if slot > now:
                await asyncio.sleep(slot - now)
            if time.monotonic() >= self._paused_until:
                return
            # A backoff began while this caller slept: its slot is void, it takes one after the pause.

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` in the next slot; after a 429, back off and retry it (every call made
        through this is a read or carries an idempotency key, so a retry is safe)."""
        for attempt in range(MAX_ATTEMPTS):
            await self.wait()
            try:
                result = await operation()
            except StripeRateLimited as exc:
                self.rate_limited += 1
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                self._back_off(attempt, exc.retry_after)
                continue
            self._rate = min(self._max, self._rate + self._max * RECOVERY)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _back_off(self, attempt: int, retry_after: float | None) -> None:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
        delay = max(delay, retry_after or 0.0)
        self._rate = max(self._max * FLOOR, self._rate / 2)
        self._paused_until = max(self._paused_until, time.monotonic() + delay)
        self._next_at = max(self._next_at, self._paused_until)
        log.warning(
            "stripe rate limited; backing off",
            extra={"delay_s": round(delay, 2), "per_second": round(self._rate, 1), "attempt": attempt + 1},
        )
