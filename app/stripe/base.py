"""The shared core of the gateway: one SDK client, error translation, timing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TypeVar

import stripe

from app import clock, metrics
from app.config import Settings
from app.errors import (
    Conflict,
    DomainError,
    PaymentRequired,
    ServiceUnavailable,
    Unprocessable,
    UpstreamError,
)

log = logging.getLogger("app.stripe")
T = TypeVar("T")


def decimal_param(value: Decimal) -> str:
    """A decimal as Stripe's `*_decimal` params take it: plain digits (the SDK would send `1E+1`)."""
    return format(value.normalize(), "f")


class StripeRateLimited(ServiceUnavailable):
    """Stripe answered 429: too many requests. `retry_after` is its Retry-After, when it sent one."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("Stripe is busy, try again shortly", code="stripe_rate_limited")
        self.retry_after = retry_after


class StripeRequestInProgress(ServiceUnavailable):
    """Stripe was still running an earlier request sent with the same idempotency key (409
    `idempotency_key_in_use`) for longer than we wait for it."""

    def __init__(self) -> None:
        super().__init__(
            "Stripe is still processing an identical request; try again shortly",
            code="stripe_request_in_progress",
        )


# A request sent again while one with its idempotency key is unfinished: first pause, longest pause.
IN_FLIGHT_FIRST_PAUSE = 0.25
IN_FLIGHT_LONGEST_PAUSE = 2.0


def key_in_use(exc: stripe.StripeError) -> bool:
    """Stripe answered 409 `idempotency_key_in_use`: a request with this idempotency key is still
    running there (a concurrent duplicate, or the attempt a timed-out retry follows). Stripe saves
    nothing for it, so the same request sent again once the first ends gets the first's answer."""
    error = exc.error
    return exc.http_status == 409 and error is not None and error.code == "idempotency_key_in_use"


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = {str(name).lower(): value for name, value in (exc.headers or {}).items()}
    try:
        value = float(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def translate_error(exc: stripe.StripeError) -> DomainError:
    """Map a Stripe error onto ours; Stripe's user-facing message is kept, nothing internal."""
    message = exc.user_message or getattr(exc, "_message", None) or "Stripe refused the request"
    if key_in_use(exc):
        return StripeRequestInProgress()
    if isinstance(exc, stripe.CardError):
        return PaymentRequired(message, code=exc.code or "card_declined")
    if isinstance(exc, stripe.IdempotencyError):
        # A retry whose details differ from the attempt Stripe already answered (e.g. another card).
        return Conflict(
            "An earlier attempt of this request reached Stripe with other details; retry it unchanged",
            code="stripe_idempotency_conflict",
        )
    if isinstance(exc, stripe.RateLimitError):
        return StripeRateLimited(_retry_after(exc))
    if isinstance(exc, stripe.InvalidRequestError):
        return Unprocessable(message, code=exc.code or "stripe_invalid_request")
    if isinstance(exc, stripe.APIConnectionError):
        return UpstreamError("Stripe could not be reached", code="stripe_unreachable")
    return UpstreamError("Stripe failed to answer", code="stripe_error")


def answered_at(result: object) -> int | None:
    """When Stripe answered with `result`, by Stripe's clock: the `Date` of its answer (whole
    seconds), which no snapshot in the answer is older than. None for an idempotent replay (the
    body is the first answer's, from a moment the replay does not date). An answer without a
    `Date` (a test double) is dated by our clock."""
    response = getattr(result, "last_response", None)
    headers = {
        str(name).lower(): str(value) for name, value in (getattr(response, "headers", None) or {}).items()
    }
    if headers.get("idempotent-replayed") == "true":
        return None
    if "date" in headers:
        with contextlib.suppress(TypeError, ValueError):
            return int(parsedate_to_datetime(headers["date"]).timestamp())
    return clock.timestamp()


def stripe_request_id(result: object) -> str | None:
    """The `Request-Id` Stripe answered with, when the SDK kept the response on the object."""
    response = getattr(result, "last_response", None)
    request_id = getattr(response, "request_id", None)
    return request_id if isinstance(request_id, str) else None


class StripeBase:
    """Holds the SDK client; every call goes through `_call` so errors and timings are uniform."""

    def __init__(self, settings: Settings, http_client: stripe.HTTPClient | None = None) -> None:
        base = settings.stripe_api_base
        addresses: dict[str, str] = (
            {"api": base, "connect": base, "files": base, "meter_events": base} if base else {}
        )
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            stripe_version=settings.stripe_api_version,
            base_addresses=addresses,  # type: ignore[arg-type]
            max_network_retries=settings.stripe_max_network_retries,
            http_client=http_client or stripe.HTTPXClient(timeout=20),
        )
        self._in_flight_wait = settings.stripe_in_flight_wait_seconds

    @property
    def client(self) -> stripe.StripeClient:
        return self._client

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` through `_call_once`; sent again, with growing pauses, while Stripe answers that
        a request with its idempotency key is still running (the SDK's own few retries of that
        409 are over in about a second, shorter than such a request may take), for about
        `stripe_in_flight_wait_seconds`: the first request's answer then comes back as a replay."""
        deadline = time.monotonic() + self._in_flight_wait  # wall clock
        pause = IN_FLIGHT_FIRST_PAUSE
        while True:
            try:
                return await self._call_once(operation, call)
            except StripeRequestInProgress:
                left = deadline - time.monotonic()  # wall clock
                if left <= 0:
                    raise
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, IN_FLIGHT_LONGEST_PAUSE)

    async def _call_once(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await call()
        except stripe.StripeError as exc:
            outcome = type(exc).__name__
            metrics.STRIPE_ERRORS.labels(operation, outcome).inc()
            log.warning(
                "stripe call failed",
                extra={
                    "operation": operation,
                    "stripe_error": outcome,
                    "stripe_code": exc.code,
                    "stripe_request_id": exc.request_id,
                },
            )
            raise translate_error(exc) from None
        finally:
            elapsed = time.perf_counter() - started
            metrics.STRIPE_CALLS.labels(operation, outcome).observe(elapsed)
        log.info(
            "stripe call",
            extra={
                "operation": operation,
                "stripe_request_id": stripe_request_id(result),
                "ms": round(elapsed * 1000, 2),
            },
        )
        return result
