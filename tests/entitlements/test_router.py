"""The gateway's check/track API: service token, reasons, exact counters, periods, rate windows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.dependencies import api_state
from app.entitlements import counters
from app.models import OutboxMessage, Subscription
from tests.support.auth import bearer
from tests.support.entitlement_data import (
    GATEWAY,
    IN_PERIOD,
    OLD_GATEWAY_TOKEN,
    PERIOD_END,
    PERIOD_START,
    check_body,
    entitled,
)

pytestmark = pytest.mark.usefixtures("business_time")


async def check(http: httpx.AsyncClient, subscription: Subscription, **fields: object) -> dict[str, object]:
    response = await http.post(
        "/api/v1/entitlements/check", json=check_body(subscription, **fields), headers=GATEWAY
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_check_without_a_service_token_is_401(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    subscription = await entitled(engine)
    response = await http.post("/api/v1/entitlements/check", json=check_body(subscription))
    assert response.status_code == 401
    assert response.json()["code"] == "missing_token"


async def test_a_consumer_jwt_is_not_a_service_token(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: object
) -> None:
    subscription = await entitled(engine)
    headers = auth()  # type: ignore[operator]
    response = await http.post("/api/v1/entitlements/check", json=check_body(subscription), headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_service_token"


async def test_every_configured_service_token_is_accepted_while_rotating(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine)
    response = await http.post(
        "/api/v1/entitlements/check",
        json=check_body(subscription),
        headers=bearer(OLD_GATEWAY_TOKEN),
    )
    assert response.status_code == 200
    assert response.json()["allowed"] is True


async def test_check_needs_exactly_one_of_key_and_subscription(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await http.post("/api/v1/entitlements/check", json={"api_id": "api-x"}, headers=GATEWAY)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_unknown_key_is_no_subscription(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    response = await http.post(
        "/api/v1/entitlements/check", json={"api_key_id": "key_nobody", "api_id": "api-x"}, headers=GATEWAY
    )
    assert response.json() == response.json() | {"allowed": False, "reason": "no_subscription"}


async def test_a_key_of_another_api_is_no_subscription(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    subscription = await entitled(engine)
    body = await check(http, subscription, api_id="some-other-api")
    assert (body["allowed"], body["reason"]) == (False, "no_subscription")


async def test_a_cancelled_subscription_is_not_active(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    subscription = await entitled(engine, status="cancelled")
    body = await check(http, subscription)
    assert (body["allowed"], body["reason"]) == (False, "not_active")


async def test_check_by_subscription_id_answers_like_by_key(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=10)
    response = await http.post(
        "/api/v1/entitlements/check",
        json={"subscription_id": str(subscription.id), "api_id": subscription.api_id, "track": 4},
        headers=GATEWAY,
    )
    body = response.json()
    assert (body["allowed"], body["used"], body["remaining"], body["limit"]) == (True, 4, 6, 10)


async def test_calls_are_allowed_until_the_limit_then_refused_quota_exhausted(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=3)
    answers = [await check(http, subscription, track=1) for _ in range(4)]
    assert [a["allowed"] for a in answers] == [True, True, True, False]
    assert [a["remaining"] for a in answers] == [2, 1, 0, 0]
    assert answers[-1]["reason"] == "quota_exhausted"
    assert answers[-1]["reset_at"] == PERIOD_END.isoformat().replace("+00:00", "Z")
    assert all(a["overage"] is False for a in answers)


async def test_a_check_without_track_counts_nothing(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    subscription = await entitled(engine, call_limit=1)
    for _ in range(3):
        body = await check(http, subscription)
        assert (body["allowed"], body["used"]) == (True, 0)


async def test_a_batch_that_does_not_fit_is_refused_whole(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=10)
    assert (await check(http, subscription, track=8))["allowed"] is True
    refused = await check(http, subscription, track=3)
    assert (refused["allowed"], refused["used"], refused["remaining"]) == (False, 8, 2)
    assert (await check(http, subscription, track=2))["allowed"] is True


async def test_10000_concurrent_checks_with_5000_left_allow_exactly_5000(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=7000)
    assert (await check(http, subscription, track=2000))["used"] == 2000
    gate = asyncio.Semaphore(48)

    async def one() -> bool:
        async with gate:
            response = await http.post(
                "/api/v1/entitlements/check", json=check_body(subscription, track=1), headers=GATEWAY
            )
        allowed: bool = response.json()["allowed"]
        return allowed

    answers = await asyncio.gather(*(one() for _ in range(10_000)))
    assert sum(answers) == 5000
    final = await check(http, subscription)
    assert (final["used"], final["remaining"], final["reason"]) == (7000, 0, "quota_exhausted")


async def test_counters_start_over_at_the_subscriptions_own_period_boundary(
    http: httpx.AsyncClient, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    subscription = await entitled(engine, call_limit=2)
    business_time.set(PERIOD_END - timedelta(seconds=1))
    assert [(await check(http, subscription, track=1))["allowed"] for _ in range(3)] == [True, True, False]
    # Stripe has not reported the renewal yet: the period rolls on monthly from our row's period.
    business_time.set(PERIOD_END)
    renewed = await check(http, subscription, track=1)
    assert (renewed["allowed"], renewed["used"]) == (True, 1)
    assert renewed["period_start"] == PERIOD_END.isoformat().replace("+00:00", "Z")


async def test_a_per_minute_rate_limit_refuses_then_lets_through_next_minute(
    http: httpx.AsyncClient, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    subscription = await entitled(engine, rate_limit_per_minute=2)
    business_time.set(IN_PERIOD.replace(second=0) + timedelta(seconds=10))
    answers = [await check(http, subscription, track=1) for _ in range(3)]
    assert [a["allowed"] for a in answers] == [True, True, False]
    limited = answers[-1]
    assert (limited["reason"], limited["limit"], limited["remaining"]) == ("rate_limited", 2, 0)
    assert limited["reset_at"] == (IN_PERIOD.replace(second=0) + timedelta(minutes=1)).isoformat().replace(
        "+00:00", "Z"
    )
    business_time.advance(timedelta(minutes=1))
    assert (await check(http, subscription, track=1))["allowed"] is True


async def test_a_refused_call_counts_in_no_window(
    http: httpx.AsyncClient, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    subscription = await entitled(engine, call_limit=5, rate_limit_per_day=2)
    for _ in range(4):
        await check(http, subscription, track=1)
    business_time.advance(timedelta(days=1))
    body = await check(http, subscription, track=1)
    assert (body["allowed"], body["used"]) == (True, 3)


async def test_track_counts_a_batch_whatever_the_limits(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    first = await entitled(engine, call_limit=5)
    second = await entitled(engine)
    response = await http.post(
        "/api/v1/entitlements/track",
        json={
            "calls": [
                {"api_key_id": first.api_key_id, "api_id": first.api_id, "count": 4},
                {"subscription_id": str(second.id), "api_id": second.api_id, "count": 10},
                {"api_key_id": first.api_key_id, "api_id": first.api_id, "count": 3},
                {"api_key_id": "key_unknown", "api_id": first.api_id, "count": 2},
            ]
        },
        headers=GATEWAY,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tracked"] == 17
    assert [r["counted"] for r in body["results"]] == [4, 10, 3, 0]
    assert [r["used"] for r in body["results"]] == [4, 10, 7, None]
    refused = await check(http, first, track=1)
    assert (refused["reason"], refused["used"]) == ("quota_exhausted", 7)


async def test_each_tracked_item_gets_its_own_subscriptions_count_in_the_batchs_order(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscriptions = [await entitled(engine, call_limit=1000) for _ in range(3)]
    for n, subscription in enumerate(subscriptions):
        for _ in range(n + 1):
            await check(http, subscription, track=1)
    third, first, second = subscriptions[2], subscriptions[0], subscriptions[1]
    distinct = [
        {"subscription_id": str(third.id), "api_id": third.api_id, "count": 30},
        {"api_key_id": first.api_key_id, "api_id": first.api_id, "count": 10},
        {"subscription_id": str(second.id), "api_id": second.api_id, "count": 20},
    ]
    # The same subscription named by key and by id is one subscription, counted in turn.
    repeated = [*distinct, {"subscription_id": str(first.id), "api_id": first.api_id, "count": 5}]
    answers = []
    for calls in (distinct, repeated):
        response = await http.post("/api/v1/entitlements/track", json={"calls": calls}, headers=GATEWAY)
        assert response.status_code == 200, response.text
        answers.append([(r["counted"], r["used"], r["remaining"]) for r in response.json()["results"]])
    assert answers == [
        [(30, 33, 967), (10, 11, 989), (20, 22, 978)],
        [(30, 63, 937), (10, 21, 979), (20, 42, 958), (5, 26, 974)],
    ]


async def test_every_counter_expires_at_its_period_or_window_end_however_often_it_moves(
    gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    app, http = gateway
    subscription = await entitled(engine, call_limit=100, rate_limit_per_minute=50, rate_limit_per_day=80)
    for _ in range(3):
        await check(http, subscription, track=1)
    item = {"subscription_id": str(subscription.id), "api_id": subscription.api_id, "count": 2}
    tracked = await http.post("/api/v1/entitlements/track", json={"calls": [item, item]}, headers=GATEWAY)
    assert tracked.status_code == 200, tracked.text
    redis = api_state(app).resources.entitlements_redis
    now = int(clock.now().timestamp())
    ends = {
        "period": int(PERIOD_END.timestamp()) + counters.PERIOD_GRACE_SECONDS,
        "minute": (now // 60 + 1) * 60,
        "day": (now // 86400 + 1) * 86400,
    }
    found = {
        key.decode(): await redis.ttl(key)
        async for key in redis.scan_iter(f"ent:{{sub:{subscription.id}}}:*")
    }
    counted = {key: ttl for key, ttl in found.items() if key.split(":")[3] in ends}
    assert sorted(key.split(":")[3] for key in counted) == ["day", "minute", "period"]
    for key, ttl in counted.items():
        # Expires 60 s after its end (late tracks still find it), measured from business time.
        assert 0 < ttl <= ends[key.split(":")[3]] - now + 60, (key, ttl)


async def test_tracked_calls_fill_the_minute_window_they_were_made_in(
    http: httpx.AsyncClient, engine: AsyncEngine, business_time: clock.ManualClock
) -> None:
    subscription = await entitled(engine, rate_limit_per_minute=5)
    business_time.set(IN_PERIOD.replace(second=0) + timedelta(seconds=5))
    item = {"subscription_id": str(subscription.id), "api_id": subscription.api_id, "count": 5}
    for _ in range(2):
        tracked = await http.post("/api/v1/entitlements/track", json={"calls": [item]}, headers=GATEWAY)
        assert tracked.status_code == 200, tracked.text
        assert (await check(http, subscription, track=1))["reason"] == "rate_limited"
        business_time.advance(timedelta(minutes=1))
    # The next minute's window is empty again; the period counted every call.
    allowed = await check(http, subscription, track=1)
    assert (allowed["allowed"], allowed["used"]) == (True, 11)


async def test_track_batch_size_is_bounded(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = {"subscription_id": "6a1b1f7e-9d6e-4a39-9d1c-3f4f1c1e2d3a", "api_id": "a", "count": 1}
    response = await http.post("/api/v1/entitlements/track", json={"calls": [item] * 1001}, headers=GATEWAY)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "calls"


async def test_snapshot_lists_live_entitlements_with_period_limits_and_counts(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    live = await entitled(engine, call_limit=100, rate_limit_per_minute=10)
    await entitled(engine, status="cancelled", user_id=None)
    await check(http, live, track=7)
    response = await http.get(f"/api/v1/entitlements/snapshot?api_id={live.api_id}", headers=GATEWAY)
    assert response.status_code == 200, response.text
    [entry] = response.json()["entitlements"]
    assert entry["subscription_id"] == str(live.id)
    assert (entry["call_limit"], entry["hard_limit"], entry["used"], entry["allowed"]) == (100, True, 7, True)
    assert entry["rate_limit_per_minute"] == 10
    assert entry["period_start"] == PERIOD_START.isoformat().replace("+00:00", "Z")
    assert response.json()["next_cursor"] is None


async def test_snapshot_pages_with_a_cursor(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for _ in range(3):
        await entitled(engine)
    first = (await http.get("/api/v1/entitlements/snapshot?limit=2", headers=GATEWAY)).json()
    assert len(first["entitlements"]) == 2
    second = (
        await http.get(
            f"/api/v1/entitlements/snapshot?limit=2&cursor={first['next_cursor']}", headers=GATEWAY
        )
    ).json()
    assert len(second["entitlements"]) == 1
    assert second["next_cursor"] is None
    bad = await http.get("/api/v1/entitlements/snapshot?cursor=nope", headers=GATEWAY)
    assert (bad.status_code, bad.json()["details"][0]["field"]) == (422, "cursor")


async def test_the_check_reads_the_cached_snapshot_not_the_database(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # Guard for the refresh tests: a write that skips the services leaves the cached snapshot as it was.
    subscription = await entitled(engine)
    assert (await check(http, subscription))["allowed"] is True
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription).where(Subscription.id == subscription.id).values(status="cancelled")
        )
    assert (await check(http, subscription))["allowed"] is True


async def test_openapi_documents_the_service_token_and_the_refusals(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    check_route = spec["paths"]["/api/v1/entitlements/check"]["post"]
    assert check_route["security"] == [{"GatewayServiceToken": []}]
    assert "401" in check_route["responses"]
    reasons = spec["components"]["schemas"]["CheckResult"]["properties"]["reason"]["enum"]
    assert {"no_subscription", "not_active", "suspended", "quota_exhausted"} <= set(reasons)
    assert {"spend_cap_reached", "rate_limited"} <= set(reasons)


async def test_a_cancelled_subscription_is_not_active_even_after_a_suspension(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, status="past_due")
    async with engine.begin() as connection:
        await connection.execute(
            insert(OutboxMessage).values(
                id=uuid.uuid4(),
                kind="suspend_api_key",
                dedupe_key=f"suspend_api_key:{subscription.id}:0",
                subscription_id=subscription.id,
                payload={},
            )
        )
    assert (await check(http, subscription))["reason"] == "suspended"
    cancelled = await entitled(engine, status="cancelled")
    assert (await check(http, cancelled))["reason"] == "not_active"
