from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.models import OutboxMessage
from tests.support.auth import Auth
from tests.support.journeys import (
    CHECKOUT_SUCCESS_URL,
    add_card,
    consumer_with_card,
    create_plan,
    new_api_id,
    on_cheaper_of_two,
    preview_upgrade,
    register,
    registered_consumer,
    subscribe,
    subscribe_through_checkout,
)


async def _outbox(engine: AsyncEngine, subscription_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(OutboxMessage.kind)
            .where(OutboxMessage.subscription_id == subscription_id)
            .order_by(OutboxMessage.created_at)
        )
        return [kind for (kind,) in rows]


async def test_card_subscribe_upgrade_cancel_issues_and_revokes_the_key(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    basic = await create_plan(client, creator, api_id, name="Basic", monthly_price="9.99", call_limit=1000)
    pro = await create_plan(client, creator, api_id, name="Pro", monthly_price="29")
    headers = await registered_consumer(client, auth)
    card = await add_card(client, headers)

    created = await subscribe(client, headers, basic, payment_method_id=card["id"])
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "active"
    assert body["stripe_subscription_id"].startswith("sub_")
    assert body["pricing_plan"]["id"] == basic["id"]
    assert body["pricing_plan"]["monthly_price"] == 9.99
    assert body["current_period_end"] is not None
    assert body["client_secret"] is None
    assert await _outbox(engine, body["id"]) == ["create_api_key"]

    upgrade_url = f"/api/v1/subscriptions/{body['id']}/upgrade"
    upgraded = await client.put(upgrade_url, json={"new_pricing_plan_id": pro["id"]}, headers=headers)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["pricing_plan"]["name"] == "Pro"
    assert upgraded.json()["stripe_subscription_id"] == body["stripe_subscription_id"]
    assert upgraded.json()["status"] == "active"

    cancelled = await client.put(
        f"/api/v1/subscriptions/{body['id']}/cancel", json={"immediately": True}, headers=headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_at"] is not None
    assert await _outbox(engine, body["id"]) == ["create_api_key", "revoke_api_key"]


async def test_fresh_payment_method_from_stripe_js_is_attached_and_made_default(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    created = await subscribe(client, headers, plan, payment_method_id="pm_card_visa")
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"
    cards = (await client.get("/api/v1/payment-methods", headers=headers)).json()["payment_methods"]
    assert len(cards) == 1
    assert cards[0]["is_default"] is True


async def test_paid_plan_without_any_card_is_422_naming_payment_method_id(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    response = await subscribe(client, headers, plan)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "payment_method_id"


async def test_free_plan_is_active_at_once_without_stripe_and_requests_a_key(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free", call_limit=100)
    headers = await registered_consumer(client, auth)
    response = await subscribe(client, headers, plan)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "active"
    assert body["stripe_subscription_id"] is None
    assert body["pricing_plan"]["type"] == "free"
    assert await _outbox(engine, body["id"]) == ["create_api_key"]


async def test_second_live_subscription_to_the_same_api_is_409(client: httpx.AsyncClient, auth: Auth) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    headers = await registered_consumer(client, auth)
    assert (await subscribe(client, headers, plan)).status_code == 201
    again = await subscribe(client, headers, plan)
    assert again.status_code == 409
    assert again.json()["code"] == "already_subscribed"


async def test_deactivated_plan_refuses_new_subscriptions_with_409(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), type="free")
    deleted = await client.delete(f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}", headers=creator)
    assert deleted.status_code == 204
    headers = await registered_consumer(client, auth)
    response = await subscribe(client, headers, plan)
    assert response.status_code == 409
    assert response.json()["code"] == "plan_inactive"


async def test_existing_subscription_runs_on_after_its_plan_is_deactivated(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), type="free")
    headers = await registered_consumer(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    await client.delete(f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}", headers=creator)
    fetched = await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)
    assert fetched.json()["status"] == "active"


async def test_plan_mismatching_api_id_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    headers = await registered_consumer(client, auth)
    response = await client.post(
        "/api/v1/subscriptions", json={"api_id": "other-api", "pricing_plan_id": plan["id"]}, headers=headers
    )
    assert response.status_code == 404


async def test_trial_plan_starts_in_trial_with_a_key_at_once(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), trial_period_days=14)
    headers = await consumer_with_card(client, auth)
    response = await subscribe(client, headers, plan)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "trial"
    assert body["trial_end"] is not None
    assert await _outbox(engine, body["id"]) == ["create_api_key"]


async def test_subscribers_keep_their_plan_version_after_a_price_change(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), monthly_price="10")
    headers = await consumer_with_card(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    changed = await client.put(
        f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}", json={"monthly_price": "12"}, headers=creator
    )
    assert changed.json()["version"] == 2
    fetched = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert (fetched["pricing_plan"]["version"], fetched["pricing_plan"]["monthly_price"]) == (1, 10)


async def test_cancel_defaults_to_period_end_and_twice_is_harmless(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await consumer_with_card(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    first = await client.put(f"/api/v1/subscriptions/{created['id']}/cancel", headers=headers)
    second = await client.put(f"/api/v1/subscriptions/{created['id']}/cancel", headers=headers)
    assert first.status_code == second.status_code == 200
    for response in (first, second):
        assert response.json()["status"] == "active"
        assert response.json()["cancel_at_period_end"] is True
        assert response.json()["expires_at"] == created["current_period_end"]
    assert await _outbox(engine, created["id"]) == ["create_api_key"]


async def test_cancelling_a_cancelled_subscription_returns_it_unchanged(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    headers = await registered_consumer(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    url = f"/api/v1/subscriptions/{created['id']}/cancel"
    first = await client.put(url, json={"immediately": True}, headers=headers)
    second = await client.put(url, json={"immediately": True}, headers=headers)
    assert first.json() == second.json()
    assert second.json()["status"] == "cancelled"
    assert await _outbox(engine, created["id"]) == ["create_api_key", "revoke_api_key"]


async def test_free_to_paid_and_back_to_free(client: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    free = await create_plan(client, creator, api_id, type="free", name="Free")
    paid = await create_plan(client, creator, api_id, name="Paid")
    headers = await consumer_with_card(client, auth)
    created = (await subscribe(client, headers, free)).json()
    url = f"/api/v1/subscriptions/{created['id']}/upgrade"
    up = await client.put(url, json={"new_pricing_plan_id": paid["id"]}, headers=headers)
    assert up.status_code == 200, up.text
    assert up.json()["stripe_subscription_id"].startswith("sub_")
    assert up.json()["status"] == "active"
    down = await client.put(url, json={"new_pricing_plan_id": free["id"]}, headers=headers)
    assert down.status_code == 200, down.text
    assert down.json()["stripe_subscription_id"] is None
    assert (down.json()["status"], down.json()["pricing_plan"]["name"]) == ("active", "Free")


async def test_upgrade_to_another_apis_plan_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    mine = await create_plan(client, creator, new_api_id(), type="free")
    other = await create_plan(client, creator, new_api_id(), type="free")
    headers = await registered_consumer(client, auth)
    created = (await subscribe(client, headers, mine)).json()
    response = await client.put(
        f"/api/v1/subscriptions/{created['id']}/upgrade",
        json={"new_pricing_plan_id": other["id"]},
        headers=headers,
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "new_pricing_plan_id"


async def test_upgrade_preview_against_the_emulator_gives_amount_and_lines(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers, created, _basic, pro = await on_cheaper_of_two(client, auth)
    response = await preview_upgrade(client, headers, created["id"], pro)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"amount_due", "currency", "lines", "proration_date"}
    assert isinstance(body["amount_due"], int)
    assert body["proration_date"].endswith("Z")
    assert body["currency"] == "usd"
    assert body["lines"]


async def test_list_is_paginated_newest_first_with_a_stable_cursor(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    headers = await registered_consumer(client, auth)
    ids = []
    for _ in range(5):
        plan = await create_plan(client, creator, new_api_id(), type="free")
        ids.append((await subscribe(client, headers, plan)).json()["id"])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/subscriptions", params=params, headers=headers)).json()
        seen += [s["id"] for s in page["subscriptions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_list_filters_by_status(client: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    headers = await registered_consumer(client, auth)
    first_plan = await create_plan(client, creator, new_api_id(), type="free")
    second_plan = await create_plan(client, creator, new_api_id(), type="free")
    kept = (await subscribe(client, headers, first_plan)).json()
    gone = (await subscribe(client, headers, second_plan)).json()
    await client.put(f"/api/v1/subscriptions/{gone['id']}/cancel", headers=headers)
    active = (await client.get("/api/v1/subscriptions?status=active", headers=headers)).json()
    cancelled = (await client.get("/api/v1/subscriptions?status=cancelled", headers=headers)).json()
    assert [s["id"] for s in active["subscriptions"]] == [kept["id"]]
    assert [s["id"] for s in cancelled["subscriptions"]] == [gone["id"]]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "cursor=not-a-cursor", "status=paused"])
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, auth: Auth, query: str) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.get(f"/api/v1/subscriptions?{query}", headers=headers)
    assert response.status_code == 422


async def _live_usage(client: httpx.AsyncClient, auth: Auth, summary: dict[str, int]) -> dict[str, Any]:
    """The usage a free plan's subscription (100 calls a month) reports while metering answers
    `summary`."""
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free", call_limit=100)
    headers = await registered_consumer(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    with respx.mock(assert_all_called=True) as mock:
        mock.get(url__regex=rf"http://metering\.test/api/v1/usage/subscription/{created['id']}.*").respond(
            200, json={"subscription_id": created["id"], "summary": summary, "recent_calls": []}
        )
        response = await client.get(f"/api/v1/subscriptions/{created['id']}/usage", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_usage_combines_records_with_the_live_count(client: httpx.AsyncClient, auth: Auth) -> None:
    body = await _live_usage(client, auth, {"total_calls": 42, "successful_calls": 40, "failed_calls": 2})
    assert (body["total_calls"], body["successful_calls"], body["failed_calls"]) == (42, 40, 2)
    # The limit counts successful calls, as the usage worker reports and bills them.
    assert (body["call_limit"], body["remaining_calls"]) == (100, 60)
    assert body["over_limit"] is False
    assert body["live"] is True
    assert (body["estimated_amount"], body["currency"]) == (0, "usd")


async def test_usage_over_the_call_limit_says_so(client: httpx.AsyncClient, auth: Auth) -> None:
    body = await _live_usage(client, auth, {"total_calls": 101, "successful_calls": 101, "failed_calls": 0})
    assert (body["total_calls"], body["remaining_calls"], body["over_limit"]) == (101, 0, True)


async def test_usage_answers_from_records_when_metering_is_down(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="pay_per_use", price_per_call="0.01")
    headers = await consumer_with_card(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO usage_records (id, subscription_id, window_start, window_end, quantity,"
                " successful_calls, failed_calls, created_at) VALUES (gen_random_uuid(), :s, now(),"
                " now() + interval '1 hour', 6, 6, 1, now())"
            ),
            {"s": created["id"]},
        )
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.get(url__startswith="http://metering.test").respond(503)
        response = await client.get(f"/api/v1/subscriptions/{created['id']}/usage", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["live"] is False
    assert body["total_calls"] == 7
    assert body["estimated_amount"] == 6  # the 6 successful calls at 1 cent; the failed one is free


async def test_checkout_against_the_emulator_gives_a_page_that_pays_the_session(
    client: httpx.AsyncClient, auth: Auth, settings: Any
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    response = await subscribe_through_checkout(client, headers, plan)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "incomplete"
    async with httpx.AsyncClient() as browser:
        page = await browser.get(body["checkout_url"], follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (302, CHECKOUT_SUCCESS_URL)
        session_id = body["checkout_url"].rsplit("/", 1)[1]
        session = await browser.get(
            f"{settings.stripe_api_base}/v1/checkout/sessions/{session_id}",
            auth=(settings.stripe_secret_key.get_secret_value(), ""),
        )
    assert session.json()["status"] == "complete"
    assert session.json()["subscription"].startswith("sub_")
    assert session.json()["client_reference_id"] == body["id"]


async def test_cancelling_a_pending_checkout_expires_the_session(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    created = (await subscribe_through_checkout(client, headers, plan)).json()
    response = await client.put(f"/api/v1/subscriptions/{created['id']}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["checkout_url"] is None
    assert "create_api_key" not in await _outbox(engine, created["id"])


async def test_portal_session_against_the_emulator_returns_a_url(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.post(
        "/api/v1/consumers/portal-session", json={"return_url": "https://market.example/me"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert "/portal/bps_" in response.json()["url"]


async def test_card_needing_authentication_leaves_the_subscription_incomplete_with_a_secret(
    client: httpx.AsyncClient, auth: Auth, settings: Any, engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base)) as stripe:
        created_card = await stripe.post(
            "/v1/payment_methods",
            data={
                "type": "card",
                "card[number]": "4000002500003155",
                "card[exp_month]": "12",
                "card[exp_year]": "2030",
                "card[cvc]": "123",
            },
            auth=(settings.stripe_secret_key.get_secret_value(), ""),
        )
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    response = await subscribe(client, headers, plan, payment_method_id=created_card.json()["id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "incomplete"
    assert body["client_secret"].startswith("pi_")
    assert await _outbox(engine, body["id"]) == []


async def test_usage_answers_within_the_sibling_budget_when_metering_hangs(
    settings: Any, auth: Auth, engine: AsyncEngine
) -> None:
    import asyncio
    import time

    from tests.support.settings import make_settings

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and hangs up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hanging = make_settings(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        stripe_api_base=settings.stripe_api_base,
        metering_service_url=f"http://127.0.0.1:{port}",
    )
    app = create_app(hanging)
    async with (
        server,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        plan = await create_plan(http, auth("creator"), new_api_id(), type="free")
        headers = await registered_consumer(http, auth)
        created = (await subscribe(http, headers, plan)).json()
        started = time.perf_counter()
        response = await http.get(f"/api/v1/subscriptions/{created['id']}/usage", headers=headers)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.json()["live"] is False
    assert elapsed < 2.5


async def test_with_stripe_tax_the_emulator_still_subscribes_upgrades_and_checks_out(
    taxed_client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    basic = await create_plan(taxed_client, creator, api_id, name="Basic", monthly_price="9.99")
    pro = await create_plan(taxed_client, creator, api_id, name="Pro", monthly_price="29")
    headers = await consumer_with_card(taxed_client, auth)

    created = await subscribe(taxed_client, headers, basic)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"
    upgrade_url = f"/api/v1/subscriptions/{created.json()['id']}/upgrade"
    upgraded = await taxed_client.put(upgrade_url, json={"new_pricing_plan_id": pro["id"]}, headers=headers)
    assert upgraded.status_code == 200, upgraded.text
    other = auth("consumer", user_id="taxed-checkout")
    await register(taxed_client, other)
    checkout = await subscribe_through_checkout(taxed_client, other, basic)
    assert checkout.status_code == 201, checkout.text
    assert checkout.json()["checkout_url"]


async def test_a_subscription_says_its_api_key_is_being_issued_until_the_key_is_stored(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free", call_limit=100)
    headers = await registered_consumer(client, auth)
    created = (await subscribe(client, headers, plan)).json()
    assert (created["api_key_id"], created["api_key_status"]) == (None, "issuing")
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE subscriptions SET api_key_id = 'key_1' WHERE id = :id"), {"id": created["id"]}
        )
    issued = (await client.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert (issued["api_key_id"], issued["api_key_status"]) == ("key_1", "issued")
    cancelled = await client.put(
        f"/api/v1/subscriptions/{created['id']}/cancel", json={"immediately": True}, headers=headers
    )
    assert cancelled.json()["api_key_status"] == "revoked"


async def test_the_dev_sca_test_card_leaves_the_subscription_incomplete_with_a_client_secret(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    created = await subscribe(client, headers, plan, payment_method_id="pm_card_authenticationRequired")
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "incomplete"
    assert created.json()["client_secret"]
