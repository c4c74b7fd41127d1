"""The pace `billing sync` keeps with Stripe: a 429 backs every caller off, then the pace recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import respx

from app.stripe import StripeGateway
from app.stripe.base import StripeRateLimited
from app.sync import ratelimit
from app.sync.ratelimit import RateLimiter
from tests.support.settings import make_settings

RATE_LIMITED = {
    "error": {
        "type": "invalid_request_error",
        "code": "rate_limit",
        "message": "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
    }
}


@pytest.fixture
def stripe_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url="https://api.stripe.com", assert_all_called=False) as mock:
        yield mock


async def test_a_429_from_stripe_is_retried_after_its_retry_after_and_the_page_comes_back(
    stripe_api: respx.MockRouter,
) -> None:
    page = {"object": "list", "url": "/v1/customers", "has_more": False, "data": []}
    stripe_api.get("/v1/customers").mock(
        side_effect=[
            httpx.Response(429, json=RATE_LIMITED, headers={"Retry-After": "1"}),
            httpx.Response(200, json=page),
        ]
    )
    gateway = StripeGateway(make_settings())
    limiter = RateLimiter(per_second=100)

    started = time.monotonic()
    listed = await limiter.call(lambda: gateway.list_page("customers", starting_after=None))

    assert listed.objects == []
    assert len(stripe_api.calls) == 2
    assert time.monotonic() - started >= 1.0
    assert limiter.rate_limited == 1


async def test_stripes_429_becomes_a_rate_limited_error_with_its_retry_after(
    stripe_api: respx.MockRouter,
) -> None:
    stripe_api.get("/v1/customers").respond(429, json=RATE_LIMITED, headers={"Retry-After": "2"})
    gateway = StripeGateway(make_settings())

    with pytest.raises(StripeRateLimited) as raised:
        await gateway.list_page("customers", starting_after=None)

    assert raised.value.retry_after == 2.0
    assert raised.value.status == 503


async def test_a_429_holds_every_caller_and_halves_the_pace_which_then_recovers() -> None:
    limiter = RateLimiter(per_second=50)
    answers: list[float] = []
    limited_once = False

    async def call() -> None:
        nonlocal limited_once
        if not limited_once:
            limited_once = True
            raise StripeRateLimited(retry_after=None)
        answers.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(limiter.call(call) for _ in range(11)))

    # The first call's 429 came at once; the backoff (0.25-0.5 s) held the other ten callers too.
    assert len(answers) == 11
    assert min(answers) - started >= ratelimit.BACKOFF_BASE * 0.5 - 0.01
    assert limiter.rate_limited == 1
    # Halved to 25/s, then 11 calls through at +5% of 50/s each: back to the configured pace.
    assert limiter.per_second == 50
    assert max(answers) - min(answers) >= 10 / 50 - 0.01


async def test_a_call_limited_every_time_gives_up_after_the_last_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "BACKOFF_BASE", 0.001)
    limiter = RateLimiter(per_second=1000)
    tries = 0

    async def call() -> None:
        nonlocal tries
        tries += 1
        raise StripeRateLimited(retry_after=None)

    with pytest.raises(StripeRateLimited):
        await limiter.call(call)

    assert tries == ratelimit.MAX_ATTEMPTS
    assert limiter.per_second == pytest.approx(1000 * ratelimit.FLOOR)
