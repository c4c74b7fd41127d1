"""Stripe Test Clocks in the gateway (respx, Stripe's documented shapes), and business time that
follows one (BILLING_CLOCK) in every process, the metering stand-in included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from app import clock
from app.config import ConfigError
from app.dev.siblings import build_app
from app.stripe.gateway import StripeGateway
from app.stripe.test_clocks import (
    CUSTOMERS_PER_CLOCK,
    StripeTestClock,
    TestClockTime,
    business_clock,
    group_per_clock,
)
from tests.support.settings import make_settings

STRIPE = "https://api.stripe.com"
FROZEN = 1_790_000_000
CLOCK_ID = "clock_1QwErTyUiOp"


def _clock(status: str = "ready", frozen_time: int = FROZEN, target: int | None = None) -> dict[str, Any]:
    """`test_helpers.test_clock` as Stripe's API reference shows it."""
    return {
        "id": CLOCK_ID,
        "object": "test_helpers.test_clock",
        "created": FROZEN - 60,
        "deletes_after": FROZEN - 60 + 30 * 86400,
        "frozen_time": frozen_time,
        "livemode": False,
        "name": "Annual renewal",
        "status": status,
        "status_details": {"advancing": {"target_frozen_time": target}} if target else {},
    }


def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


@pytest.fixture
def stripe_mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=STRIPE, assert_all_called=True) as mock:
        yield mock


@pytest.fixture
def gateway() -> StripeGateway:
    return StripeGateway(make_settings())


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_create_test_clock_sends_frozen_time_name_and_idempotency_key(
    stripe_mock: respx.MockRouter, gateway: StripeGateway
) -> None:
    route = stripe_mock.post("/v1/test_helpers/test_clocks").respond(200, json=_clock())
    created = await gateway.create_test_clock(
        frozen_time=_at(FROZEN), name="Annual renewal", idempotency_key="clock-create:run-7:0"
    )
    assert created == StripeTestClock(
        id=CLOCK_ID,
        name="Annual renewal",
        frozen_time=_at(FROZEN),
        status="ready",
        target_frozen_time=None,
        deletes_after=_at(FROZEN - 60 + 30 * 86400),
    )
    request = route.calls.last.request
    assert _form(request) == {"frozen_time": [str(FROZEN)], "name": ["Annual renewal"]}
    assert request.headers["Idempotency-Key"] == "clock-create:run-7:0"


async def test_advance_answers_advancing_toward_its_target(
    stripe_mock: respx.MockRouter, gateway: StripeGateway
) -> None:
    target = FROZEN + 31 * 86400
    route = stripe_mock.post(f"/v1/test_helpers/test_clocks/{CLOCK_ID}/advance").respond(
        200, json=_clock("advancing", target=target)
    )
    advancing = await gateway.advance_test_clock(
        CLOCK_ID, frozen_time=_at(target), idempotency_key="clock-advance:run-7:1"
    )
    assert (advancing.status, advancing.frozen_time, advancing.target_frozen_time) == (
        "advancing",
        _at(FROZEN),
        _at(target),
    )
    assert _form(route.calls.last.request) == {"frozen_time": [str(target)]}
    assert route.calls.last.request.headers["Idempotency-Key"] == "clock-advance:run-7:1"


async def test_retrieve_reads_the_clock_ready_at_its_new_frozen_time(
    stripe_mock: respx.MockRouter, gateway: StripeGateway
) -> None:
    stripe_mock.get(f"/v1/test_helpers/test_clocks/{CLOCK_ID}").respond(
        200, json=_clock(frozen_time=FROZEN + 99)
    )
    found = await gateway.retrieve_test_clock(CLOCK_ID)
    assert (found.status, found.frozen_time) == ("ready", _at(FROZEN + 99))


async def test_delete_test_clock_calls_delete(stripe_mock: respx.MockRouter, gateway: StripeGateway) -> None:
    route = stripe_mock.delete(f"/v1/test_helpers/test_clocks/{CLOCK_ID}").respond(
        200, json={"id": CLOCK_ID, "object": "test_helpers.test_clock", "deleted": True}
    )
    await gateway.delete_test_clock(CLOCK_ID)
    assert route.called


async def test_customer_on_a_clock_is_created_with_test_clock(
    stripe_mock: respx.MockRouter, gateway: StripeGateway
) -> None:
    route = stripe_mock.post("/v1/customers").respond(
        200,
        json={
            "id": "cus_onclock",
            "object": "customer",
            "email": "sim-1@example.com",
            "test_clock": CLOCK_ID,
            "metadata": {"consumer_id": "c-1"},
        },
    )
    customer = await gateway.create_customer(
        email="sim-1@example.com",
        metadata={"consumer_id": "c-1"},
        idempotency_key="cus:c-1",
        test_clock=CLOCK_ID,
    )
    assert (customer.id, customer.email) == ("cus_onclock", "sim-1@example.com")
    form = _form(route.calls.last.request)
    assert form["test_clock"] == [CLOCK_ID]
    assert form["metadata[consumer_id]"] == ["c-1"]


async def test_stripe_refusing_an_advance_is_a_domain_error_not_the_sdks(
    stripe_mock: respx.MockRouter, gateway: StripeGateway
) -> None:
    from app.errors import DomainError

    stripe_mock.post(f"/v1/test_helpers/test_clocks/{CLOCK_ID}/advance").respond(
        400,
        json={
            "error": {
                "type": "invalid_request_error",
                "message": "The frozen_time must be after the test clock's current frozen_time.",
            }
        },
    )
    with pytest.raises(DomainError) as refused:
        await gateway.advance_test_clock(CLOCK_ID, frozen_time=_at(FROZEN - 1), idempotency_key="k")
    assert refused.value.status == 422


def test_customers_are_grouped_at_most_three_per_clock() -> None:
    customers = [f"c{i}" for i in range(8)]
    groups = group_per_clock(customers)
    assert groups == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6", "c7"]]
    assert all(len(g) <= CUSTOMERS_PER_CLOCK for g in groups)
    assert [c for g in groups for c in g] == customers
    assert group_per_clock([]) == []
    with pytest.raises(ValueError, match="at least one"):
        group_per_clock(customers, per_clock=0)


def test_time_follows_the_test_clock_reading_it_at_most_once_per_refresh() -> None:
    settings = make_settings(billing_clock=f"stripe-test-clock:{CLOCK_ID}")
    with respx.mock(base_url=STRIPE) as mock:
        route = mock.get(f"/v1/test_helpers/test_clocks/{CLOCK_ID}")
        route.side_effect = [
            httpx.Response(200, json=_clock(frozen_time=FROZEN)),
            httpx.Response(200, json=_clock(frozen_time=FROZEN + 86400)),
        ]
        followed = TestClockTime(settings, CLOCK_ID, refresh_seconds=3600)
        assert followed.now() == followed.now() == _at(FROZEN)
        assert route.call_count == 1  # cached: a frozen clock does not move between advances
        fresh = TestClockTime(settings, CLOCK_ID, refresh_seconds=0)
        assert fresh.now() == _at(FROZEN + 86400)


def test_time_never_goes_back_when_the_clock_cannot_be_read() -> None:
    settings = make_settings(billing_clock=f"stripe-test-clock:{CLOCK_ID}")
    with respx.mock(base_url=STRIPE) as mock:
        route = mock.get(f"/v1/test_helpers/test_clocks/{CLOCK_ID}")
        route.side_effect = [
            httpx.Response(200, json=_clock(frozen_time=FROZEN)),
            httpx.Response(500, json={"error": {"type": "api_error", "message": "down"}}),
        ]
        followed = TestClockTime(settings, CLOCK_ID, refresh_seconds=0)
        assert followed.now() == _at(FROZEN)
        assert followed.now() == _at(FROZEN)


def test_an_unreadable_test_clock_fails_loudly_before_any_time_is_known() -> None:
    settings = make_settings(billing_clock=f"stripe-test-clock:{CLOCK_ID}")
    with respx.mock(base_url=STRIPE) as mock:
        mock.get(f"/v1/test_helpers/test_clocks/{CLOCK_ID}").respond(
            404, json={"error": {"type": "invalid_request_error", "message": "No such test_clock"}}
        )
        with pytest.raises(RuntimeError, match=CLOCK_ID):
            TestClockTime(settings, CLOCK_ID).now()


def test_production_default_is_the_system_clock() -> None:
    assert isinstance(business_clock(make_settings()), clock.SystemClock)
    chosen = business_clock(make_settings(billing_clock=f"stripe-test-clock:{CLOCK_ID}"))
    assert isinstance(chosen, TestClockTime)
    assert chosen.clock_id == CLOCK_ID


@pytest.mark.parametrize("value", ["manual", "stripe-test-clock:", "stripe-test-clock:cus_1", "System"])
def test_unknown_billing_clock_is_a_one_line_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="BILLING_CLOCK must be system or stripe-test-clock"):
        make_settings(billing_clock=value)


def test_a_test_clock_is_refused_with_a_live_key() -> None:
    with pytest.raises(ConfigError, match="test clocks are test mode only"):
        make_settings(billing_clock=f"stripe-test-clock:{CLOCK_ID}", stripe_secret_key="sk_live_x")


async def test_metering_stand_in_counts_calls_on_the_business_clocks_day() -> None:
    simulated = clock.ManualClock(datetime(2027, 3, 31, 23, 0, tzinfo=UTC))
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://metering.test") as metering:
        with clock.use(simulated):
            url = "/api/v1/usage/subscription/sub-1/calls"
            assert (await metering.post(url, json={"successful": 5})).status_code == 204
            simulated.advance(timedelta(hours=2))
            assert (await metering.post(url, json={"successful": 7, "failed": 1})).status_code == 204

        async def summary(day: date) -> dict[str, int]:
            params = {"start": day.isoformat(), "end": day.isoformat()}
            response = await metering.get("/api/v1/usage/subscription/sub-1", params=params)
            return dict(response.json()["summary"])

        assert await summary(date(2027, 3, 31)) == {
            "total_calls": 5,
            "successful_calls": 5,
            "failed_calls": 0,
        }
        assert await summary(date(2027, 4, 1)) == {"total_calls": 8, "successful_calls": 7, "failed_calls": 1}
