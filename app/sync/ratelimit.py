from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Spaces calls evenly at `per_second`, so bulk work stays under Stripe's rate limit."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next_at = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next_at)
        self._next_at = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
