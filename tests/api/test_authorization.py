"""The authorisation matrix: other users' objects are 404, wrong roles and other creators 403."""

from __future__ import annotations

import httpx
import pytest

from tests.support.journeys import Auth, add_card, create_plan, new_api_id, register, subscribe


async def test_another_consumers_subscription_is_404_on_every_route(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    api_id = new_api_id()
    plan = await create_plan(client, creator, api_id, type="free")
    other_plan = await create_plan(client, creator, api_id, type="free", name="Other")
    owner = auth("consumer")
    await register(client, owner)
    subscription = (await subscribe(client, owner, plan)).json()
    stranger = auth("consumer")
    await register(client, stranger)
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
    owner = auth("consumer")
    await register(client, owner)
    subscription = (await subscribe(client, owner, plan)).json()
    response = await client.get(f"/api/v1/subscriptions/{subscription['id']}", headers=auth("consumer"))
    assert response.status_code == 404


async def test_another_consumers_payment_method_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    owner = auth("consumer")
    await register(client, owner)
    card = await add_card(client, owner)
    stranger = auth("consumer")
    await register(client, stranger)
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
async def test_consumer_on_creator_routes_is_403(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    url = path.format(api=plan["api_id"], plan=plan["id"])
    body = {"name": "X", "type": "free"} if method == "POST" else ({"name": "X"} if method == "PUT" else None)
    response = await client.request(method, url, json=body, headers=auth("consumer"))
    assert response.status_code == 403
    assert response.json()["code"] == "wrong_role"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/apis/{api}/plans"),
        ("PUT", "/api/v1/apis/{api}/plans/{plan}"),
        ("DELETE", "/api/v1/apis/{api}/plans/{plan}"),
    ],
)
async def test_creator_on_another_creators_api_is_403(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), type="free")
    url = path.format(api=plan["api_id"], plan=plan["id"])
    body = {"name": "X", "type": "free"} if method == "POST" else ({"name": "X"} if method == "PUT" else None)
    response = await client.request(method, url, json=body, headers=auth("creator"))
    assert response.status_code == 403
    assert response.json()["code"] == "not_api_owner"


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
