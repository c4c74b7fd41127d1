"""Stripe Test Clocks: simulated time for test-mode customers and their subscriptions.

A simulation creates clocks, puts its customers on them (Stripe takes at most three customers per
clock: `group_per_clock`), and advances them; Stripe then renews, invoices and retries as it would
over that time. `TestClockTime` lets a running process read business time from one such clock.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import stripe

from app.clock import Clock, SystemClock
from app.config import Settings
from app.stripe.base import StripeBase

log = logging.getLogger("app.stripe")
T = TypeVar("T")

# Stripe's limit: "You can add up to three customers to a test clock."
CUSTOMERS_PER_CLOCK = 3


@dataclass(frozen=True, slots=True)
class StripeTestClock:
    id: str
    name: str | None
    frozen_time: datetime
    status: str  # "advancing", "ready" or "internal_failure"
    # While advancing: where the clock is going.
    target_frozen_time: datetime | None
    deletes_after: datetime


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def stripe_test_clock_of(found: Any) -> StripeTestClock:
    """Our view of Stripe's `test_helpers.test_clock` object (SDK object or JSON)."""
    obj: dict[str, Any] = found.to_dict() if hasattr(found, "to_dict") else dict(found)
    advancing = (obj.get("status_details") or {}).get("advancing") or {}
    target = advancing.get("target_frozen_time")
    return StripeTestClock(
        id=obj["id"],
        name=obj.get("name"),
        frozen_time=_at(int(obj["frozen_time"])),
        status=str(obj["status"]),
        target_frozen_time=_at(int(target)) if target is not None else None,
        deletes_after=_at(int(obj["deletes_after"])),
    )


def group_per_clock(items: Sequence[T], per_clock: int = CUSTOMERS_PER_CLOCK) -> list[list[T]]:
    """Split customers (or anything standing for them) into groups that fit on one clock each."""
    if per_clock < 1:
        raise ValueError("a clock holds at least one customer")
    return [list(items[start : start + per_clock]) for start in range(0, len(items), per_clock)]


class TestClockCalls(StripeBase):
    __test__ = False  # not a pytest test class, despite its name

    async def create_test_clock(
        self,
        *,
        frozen_time: datetime,
        name: str | None,
        idempotency_key: str,
        customer: str | None = None,
    ) -> StripeTestClock:
        """A clock at `frozen_time`; with `customer`, that existing customer is attached to it."""
        params: dict[str, Any] = {"frozen_time": int(frozen_time.timestamp())}
        if name:
            params["name"] = name
        if customer:
            params["customer"] = customer
        created = await self._call(
            "test_helpers.test_clocks.create",
            lambda: self._client.v1.test_helpers.test_clocks.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return stripe_test_clock_of(created)

    async def advance_test_clock(
        self, clock_id: str, *, frozen_time: datetime, idempotency_key: str
    ) -> StripeTestClock:
        """Start moving the clock to `frozen_time`; it is `advancing` until Stripe has caught up."""
        advanced = await self._call(
            "test_helpers.test_clocks.advance",
            lambda: self._client.v1.test_helpers.test_clocks.advance_async(
                clock_id,
                params={"frozen_time": int(frozen_time.timestamp())},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return stripe_test_clock_of(advanced)

    async def retrieve_test_clock(self, clock_id: str) -> StripeTestClock:
        found = await self._call(
            "test_helpers.test_clocks.retrieve",
            lambda: self._client.v1.test_helpers.test_clocks.retrieve_async(clock_id),
        )
        return stripe_test_clock_of(found)

    async def delete_test_clock(self, clock_id: str) -> None:
        """Delete a clock and, as Stripe does, the customers and subscriptions on it."""
        await self._call(
            "test_helpers.test_clocks.delete",
            lambda: self._client.v1.test_helpers.test_clocks.delete_async(clock_id),
        )


class TestClockTime:
    """Business time that follows a Stripe test clock's `frozen_time` (simulations, never production).

    The `app.clock` protocol is synchronous, so the clock is read with the SDK's synchronous call,
    at most once per `refresh_seconds` of real time: a frozen clock does not move between advances,
    so the cached value is exact until the next advance, and a simulation waits `refresh_seconds`
    after an advance before it expects every process to see the new time. If Stripe cannot be
    reached, the last time read stands (time never goes back).
    """

    __test__ = False

    def __init__(self, settings: Settings, clock_id: str, *, refresh_seconds: float = 0.5) -> None:
        http = stripe.HTTPXClient(timeout=5, allow_sync_methods=True)
        self._client = StripeBase(settings, http_client=http).client
        self._clock_id = clock_id
        self._refresh_seconds = refresh_seconds
        self._last: datetime | None = None
        self._read_at = 0.0

    @property
    def clock_id(self) -> str:
        return self._clock_id

    def now(self) -> datetime:
        if self._last is not None and time.monotonic() - self._read_at < self._refresh_seconds:
            return self._last
        try:
            found = self._client.v1.test_helpers.test_clocks.retrieve(self._clock_id)
        except stripe.StripeError as exc:
            if self._last is None:
                raise RuntimeError(f"cannot read Stripe test clock {self._clock_id}: {exc}") from None
            log.warning(
                "stripe test clock unreadable, keeping its last time", extra={"clock": self._clock_id}
            )
            return self._last
        frozen = _at(int(found.frozen_time))
        self._last = frozen if self._last is None else max(self._last, frozen)
        self._read_at = time.monotonic()
        return self._last


CLOCK_SETTING = re.compile(r"^(system|stripe-test-clock:(?P<clock>clock_\w+))$")


def business_clock(settings: Settings) -> Clock:
    """The clock BILLING_CLOCK names: the system clock, or a Stripe test clock's time."""
    found = CLOCK_SETTING.match(settings.billing_clock)
    if found is None or found["clock"] is None:
        return SystemClock()
    return TestClockTime(settings, found["clock"])
