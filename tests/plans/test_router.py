from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import Auth
from tests.support.journeys import create_plan, new_api_id


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ({"type": "free", "call_limit": 1000}, {"monthly_price": None, "price_per_call": None}),
        ({"type": "subscription", "monthly_price": 9.99}, {"monthly_price": 9.99, "price_per_call": None}),
        (
            {"type": "pay_per_use", "price_per_call": "0.0015"},
            {"monthly_price": None, "price_per_call": 0.0015},
        ),
    ],
)
async def test_creator_creates_each_plan_type(
    client: httpx.AsyncClient, auth: Auth, terms: dict[str, Any], expected: dict[str, Any]
) -> None:
    api_id = new_api_id()
    plan = await create_plan(
        client,
        auth("creator"),
        api_id,
        features={"priority_support": True},
        rate_limit_per_minute=60,
        **terms,
    )
    assert plan["api_id"] == api_id
    assert plan["type"] == terms["type"]
    assert {k: plan[k] for k in expected} == expected
    assert (plan["version"], plan["is_active"], plan["currency"]) == (1, True, "usd")
    assert plan["features"] == {"priority_support": True}
    assert plan["rate_limit_per_minute"] == 60


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "subscription", "monthly_price": -5}, "monthly_price"),
        ({"type": "subscription", "monthly_price": 10_000_000}, "monthly_price"),
        ({"type": "pay_per_use", "price_per_call": -0.01}, "price_per_call"),
        ({"type": "pay_per_use", "price_per_call": 5000}, "price_per_call"),
        ({"type": "subscription", "monthly_price": 10, "currency": "xyz"}, "currency"),
        ({"type": "free", "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"type": "free", "rate_limit_per_day": -1}, "rate_limit_per_day"),
        ({"type": "subscription"}, "monthly_price"),
    ],
)
async def test_invalid_plan_terms_are_422_naming_the_field(
    client: httpx.AsyncClient, auth: Auth, body: dict[str, Any], field: str
) -> None:
    response = await client.post(
        f"/api/v1/apis/{new_api_id()}/plans", json={"name": "Bad", **body}, headers=auth("creator")
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert field in [d["field"] for d in response.json()["details"]]


async def test_price_change_makes_version_two_and_list_shows_it(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), monthly_price="10")
    url = f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}"
    changed = await client.put(url, json={"monthly_price": "15"}, headers=creator)
    assert changed.status_code == 200
    assert (changed.json()["version"], changed.json()["monthly_price"]) == (2, 15)
    listed = (await client.get(f"/api/v1/apis/{plan['api_id']}/plans", headers=auth("consumer"))).json()
    assert [(p["id"], p["version"]) for p in listed["plans"]] == [(plan["id"], 2)]


async def test_renaming_keeps_the_version(client: httpx.AsyncClient, auth: Auth) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), monthly_price="10")
    url = f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}"
    changed = await client.put(url, json={"name": "Renamed"}, headers=creator)
    assert (changed.json()["name"], changed.json()["version"]) == ("Renamed", 1)


async def test_deleted_plan_is_hidden_from_consumers_and_shown_to_its_owner_with_all(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), type="free")
    base = f"/api/v1/apis/{plan['api_id']}/plans"
    assert (await client.delete(f"{base}/{plan['id']}", headers=creator)).status_code == 204
    assert (await client.get(base, headers=auth("consumer"))).json() == {"plans": []}
    owned = (await client.get(f"{base}?all=true", headers=creator)).json()["plans"]
    assert [(p["id"], p["is_active"]) for p in owned] == [(plan["id"], False)]


async def test_an_admin_cannot_claim_an_unclaimed_api(client: httpx.AsyncClient, auth: Auth) -> None:
    api_id = new_api_id()
    response = await client.post(
        f"/api/v1/apis/{api_id}/plans", json={"name": "Free", "type": "free"}, headers=auth("admin")
    )
    assert response.status_code == 409
    assert response.json()["code"] == "api_unclaimed"
    creator = auth("creator")
    assert (
        await client.post(
            f"/api/v1/apis/{api_id}/plans", json={"name": "Free", "type": "free"}, headers=creator
        )
    ).status_code == 201
    # Once a creator owns it, an admin may add plans to it; the owner stays the creator.
    added = await client.post(
        f"/api/v1/apis/{api_id}/plans", json={"name": "Free 2", "type": "free"}, headers=auth("admin")
    )
    assert added.status_code == 201
    listed = await client.get(f"/api/v1/apis/{api_id}/plans?all=true", headers=creator)
    assert len(listed.json()["plans"]) == 2
