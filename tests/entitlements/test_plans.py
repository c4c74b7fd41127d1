"""Plan semantics at the gateway: hard limits, overage past the included calls, the consumer's spend cap."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from tests.support import rows
from tests.support.auth import Auth
from tests.support.entitlement_data import GATEWAY, PERIOD_START, check_body, entitled
from tests.support.journeys import add_card, create_plan, new_api_id, register, subscribe

pytestmark = pytest.mark.usefixtures("business_time")


async def track_one(http: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    response = await http.post("/api/v1/entitlements/check", json=body, headers=GATEWAY)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"type": "pay_per_use", "price_per_call": "0.01", "call_limit": 10}, "only subscription plans"),
        ({"type": "subscription"}, "needs a call_limit"),
    ],
)
async def test_overage_is_for_subscription_plans_with_included_calls(
    http: httpx.AsyncClient, auth: Auth, terms: dict[str, object], message: str
) -> None:
    body = {"name": "Plan", "monthly_price": "29", "overage_price_per_call": "0.002", **terms}
    if body["type"] == "pay_per_use":
        body.pop("monthly_price")
    response = await http.post(f"/api/v1/apis/{new_api_id()}/plans", json=body, headers=auth("creator"))
    assert response.status_code == 422, response.text
    [detail] = response.json()["details"]
    assert detail["field"] == "overage_price_per_call"
    assert message in detail["message"]


async def test_a_new_overage_price_makes_a_new_plan_version(http: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    plan = await create_plan(http, creator, api_id, call_limit=1000, overage_price_per_call="0.002")
    assert (plan["overage_price_per_call"], plan["version"]) == (0.002, 1)
    response = await http.put(
        f"/api/v1/apis/{api_id}/plans/{plan['id']}", json={"overage_price_per_call": "0.003"}, headers=creator
    )
    assert response.status_code == 200, response.text
    assert (response.json()["overage_price_per_call"], response.json()["version"]) == (0.003, 2)


async def test_an_overage_plan_counts_on_past_its_included_calls(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=3, overage_price_per_call=Decimal("0.01"))
    answers = [await track_one(http, check_body(subscription, track=1)) for _ in range(5)]
    assert all(a["allowed"] for a in answers)
    assert {a["reason"] for a in answers} == {"ok"}
    assert [a["overage"] for a in answers] == [False, False, False, True, True]
    assert [a["remaining"] for a in answers] == [2, 1, 0, 0, 0]


async def test_pay_per_use_is_refused_once_estimated_spend_would_pass_the_cap(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # One cent a call, a cap of five cents: five calls fit, the sixth would pass the cap.
    subscription = await entitled(
        engine, plan_type="pay_per_use", price_per_call=Decimal("0.01"), spend_cap=5
    )
    answers = [await track_one(http, check_body(subscription, track=1)) for _ in range(6)]
    assert [a["allowed"] for a in answers] == [True] * 5 + [False]
    assert (answers[-1]["reason"], answers[-1]["limit"], answers[-1]["remaining"]) == (
        "spend_cap_reached",
        5,
        0,
    )


async def test_the_spend_cap_counts_only_overage_on_an_overage_plan(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # 3 included calls, then 50 cents each under a 1 USD cap: 3 + 2 calls.
    subscription = await entitled(engine, call_limit=3, overage_price_per_call=Decimal("0.5"), spend_cap=100)
    answers = [await track_one(http, check_body(subscription, track=1)) for _ in range(6)]
    assert [a["allowed"] for a in answers] == [True] * 5 + [False]
    assert answers[-1]["reason"] == "spend_cap_reached"


async def test_a_spend_cap_change_is_seen_by_the_next_check(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(
        engine, plan_type="pay_per_use", price_per_call=Decimal("0.01"), spend_cap=2, user_id="user-capper"
    )
    for _ in range(2):
        await track_one(http, check_body(subscription, track=1))
    assert (await track_one(http, check_body(subscription, track=1)))["reason"] == "spend_cap_reached"
    response = await http.put(
        f"/api/v1/subscriptions/{subscription.id}/spend-cap",
        json={"monthly_spend_cap": 10},
        headers=auth(user_id="user-capper"),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "subscription_id": str(subscription.id),
        "monthly_spend_cap": 10,
        "currency": "usd",
        "estimated_usage_amount": 2,
    }
    assert (await track_one(http, check_body(subscription, track=1)))["allowed"] is True
    cleared = await http.put(
        f"/api/v1/subscriptions/{subscription.id}/spend-cap",
        json={"monthly_spend_cap": None},
        headers=auth(user_id="user-capper"),
    )
    assert cleared.json()["monthly_spend_cap"] is None
    assert (await track_one(http, check_body(subscription, track=100)))["allowed"] is True


async def test_a_spend_cap_on_a_plan_without_usage_prices_is_422_naming_the_field(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(engine, call_limit=10, user_id="user-flat")
    response = await http.put(
        f"/api/v1/subscriptions/{subscription.id}/spend-cap",
        json={"monthly_spend_cap": 500},
        headers=auth(user_id="user-flat"),
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "monthly_spend_cap"


async def test_a_negative_spend_cap_is_422_naming_the_field(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(
        engine, plan_type="pay_per_use", price_per_call=Decimal("0.01"), user_id="user-neg"
    )
    response = await http.put(
        f"/api/v1/subscriptions/{subscription.id}/spend-cap",
        json={"monthly_spend_cap": -1},
        headers=auth(user_id="user-neg"),
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "monthly_spend_cap"


async def test_another_consumers_spend_cap_is_404(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(engine, plan_type="pay_per_use", price_per_call=Decimal("0.01"))
    response = await http.put(
        f"/api/v1/subscriptions/{subscription.id}/spend-cap", json={"monthly_spend_cap": 5}, headers=auth()
    )
    assert response.status_code == 404


async def test_the_usage_estimate_adds_overage_past_the_included_calls(
    http: httpx.AsyncClient, engine: AsyncEngine, auth: Auth
) -> None:
    subscription = await entitled(
        engine, call_limit=100, overage_price_per_call=Decimal("0.01"), user_id="user-over"
    )
    await rows.add(engine, rows.usage(subscription, PERIOD_START + timedelta(days=1), successful=150))
    with respx.mock(assert_all_called=False) as mock:
        mock.get(url__startswith="http://metering.test/").respond(404)
        response = await http.get(
            f"/api/v1/subscriptions/{subscription.id}/usage", headers=auth(user_id="user-over")
        )
    assert response.status_code == 200, response.text
    body = response.json()
    # 29 USD a month, plus 50 calls past the 100 included at one cent.
    assert (body["successful_calls"], body["estimated_amount"], body["over_limit"]) == (150, 2950, True)


async def test_the_upgrade_preview_to_an_overage_plan_shows_its_overage_terms(
    http: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    basic = await create_plan(http, creator, api_id, monthly_price="10")
    metered = await create_plan(
        http, creator, api_id, monthly_price="30", call_limit=1000, overage_price_per_call="0.002"
    )
    consumer = auth()
    await register(http, consumer)
    await add_card(http, consumer)
    created = (await subscribe(http, consumer, basic)).json()
    with clock.use(clock.SystemClock()):
        response = await http.get(
            f"/api/v1/subscriptions/{created['id']}/upgrade/preview",
            params={"new_pricing_plan_id": metered["id"]},
            headers=consumer,
        )
    assert response.status_code == 200, response.text
    overage = [line for line in response.json()["lines"] if "included calls" in (line["description"] or "")]
    assert [(line["amount"], line["proration"]) for line in overage] == [(0, False)]
    assert "1,000 included calls" in overage[0]["description"]
    assert "0.002 USD per call" in overage[0]["description"]
