"""The authorisation matrix: other users' objects are 404, wrong roles and other creators 403."""

from __future__ import annotations

import httpx
import pytest

from tests.support.auth import Auth
from tests.support.journeys import (
    add_card,
    create_plan,
    new_api_id,
    registered_consumer,
    subscribe,
)


async def test_another_consumers_subscription_is_404_on_every_route(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    plan = await create_plan(client, creator, api_id, type="free")
    other_plan = await create_plan(client, creator, api_id, type="free", name="Other")
    owner = await registered_consumer(client, auth)
    subscription = (await subscribe(client, owner, plan)).json()
    stranger = await registered_consumer(client, auth)
    base = f"/api/v1/subscriptions/{subscription['id']}"
    responses = [
        await client.get(base, headers=stranger),
        await client.put(f"{base}/cancel", headers=stranger),
        await client.put(f"{base}/upgrade", json={"new_pricing_plan_id": other_plan["id"]}, headers=stranger),
        await client.get(f"{base}/upgrade/preview?new_pricing_plan_id={other_plan['id']}", headers=stranger),
        await client.get(f"{base}/usage", headers=stranger),
    ]
    assert [r.status_code for r in responses] == [404] * 5
    listed = (await client.get("/api/v1/subscriptions", headers=stranger)).json()
    assert listed == {"subscriptions": [], "next_cursor": None}
    still = (await client.get(base, headers=owner)).json()
    assert (still["status"], still["pricing_plan_id"]) == ("active", plan["id"])


async def test_unregistered_user_sees_no_subscription_of_others(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    owner = await registered_consumer(client, auth)
    subscription = (await subscribe(client, owner, plan)).json()
    response = await client.get(f"/api/v1/subscriptions/{subscription['id']}", headers=auth("consumer"))
    assert response.status_code == 404


async def test_another_consumers_payment_method_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    owner = await registered_consumer(client, auth)
    card = await add_card(client, owner)
    stranger = await registered_consumer(client, auth)
    assert (await client.delete(f"/api/v1/payment-methods/{card['id']}", headers=stranger)).status_code == 404
    listed = (await client.get("/api/v1/payment-methods", headers=stranger)).json()
    assert listed == {"payment_methods": []}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/apis/{api}/plans"),
        ("PUT", "/api/v1/apis/{api}/plans/{plan}"),
        ("DELETE", "/api/v1/apis/{api}/plans/{plan}"),
    ],
)
@pytest.mark.parametrize(
    ("role", "code"),
    [("consumer", "wrong_role"), ("creator", "not_api_owner")],
    ids=["consumer", "other-creator"],
)
async def test_plan_writes_by_anyone_but_the_apis_creator_or_an_admin_are_403(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str, role: str, code: str
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    url = path.format(api=plan["api_id"], plan=plan["id"])
    body = {"name": "X", "type": "free"} if method == "POST" else ({"name": "X"} if method == "PUT" else None)
    response = await client.request(method, url, json=body, headers=auth(role))
    assert response.status_code == 403
    assert response.json()["code"] == code


async def test_admin_may_change_any_creators_plan(client: httpx.AsyncClient, auth: Auth) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    response = await client.put(
        f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}", json={"name": "By admin"}, headers=auth("admin")
    )
    assert response.status_code == 200
    assert response.json()["name"] == "By admin"


async def test_no_token_is_401_on_subscription_and_payment_routes(client: httpx.AsyncClient) -> None:
    for method, url in [
        ("GET", "/api/v1/subscriptions"),
        ("POST", "/api/v1/subscriptions"),
        ("GET", "/api/v1/payment-methods"),
        ("POST", "/api/v1/payment-methods/setup-intent"),
        ("POST", "/api/v1/consumers/portal-session"),
    ]:
        response = await client.request(method, url)
        assert response.status_code == 401, url
