"""The usage worker reconciles the gateway's counters with metering: raised to it, never lowered."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.usage.jobs import aggregate_usage
from tests.support.auth import Auth
from tests.support.entitlement_data import GATEWAY, check_body, entitled
from tests.support.usage import Metering
from tests.support.worker import Ctx

# The period began on 10 March at 12:00 and business time is 13 March 12:00 (IN_PERIOD). A window
# belongs to the period holding its meter event's instant (app.usage.windows): 10 March's whole-day
# window is stamped 23:59:59 that day, so it is billed in this period, as are 11 and 12 March:
# 110 + 111 + 112 calls so far.
METERED_IN_PERIOD = 110 + 111 + 112

pytestmark = pytest.mark.usefixtures("business_time")


async def used(http: httpx.AsyncClient, body: dict[str, Any]) -> int:
    response = await http.post("/api/v1/entitlements/check", json=body, headers=GATEWAY)
    value: int = response.json()["used"]
    return value


async def test_a_counter_behind_metering_is_raised_to_its_count(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(engine, call_limit=1000, user_id="user-reconciled")
    assert await used(http, check_body(subscription, track=10)) == 10
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    assert await used(http, check_body(subscription)) == METERED_IN_PERIOD
    # The same period count as the consumer's usage (from the recorded windows: metering is down).
    with respx.mock(assert_all_called=False) as mock:
        mock.get(url__startswith="http://metering.test/").respond(503)
        response = await http.get(
            f"/api/v1/subscriptions/{subscription.id}/usage", headers=auth(user_id="user-reconciled")
        )
    assert response.status_code == 200, response.text
    assert (response.json()["successful_calls"], response.json()["live"]) == (METERED_IN_PERIOD, False)


async def test_a_counter_ahead_of_metering_is_never_lowered(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=1000)
    assert await used(http, check_body(subscription, track=600)) == 600
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    assert await used(http, check_body(subscription)) == 600


async def test_reconciliation_can_exhaust_a_quota_the_gateway_never_tracked(
    http: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=200)
    with respx.mock(assert_all_called=False) as mock:
        Metering(mock)
        await aggregate_usage(worker_ctx)
    response = await http.post("/api/v1/entitlements/check", json=check_body(subscription), headers=GATEWAY)
    assert (response.json()["allowed"], response.json()["reason"]) == (False, "quota_exhausted")
