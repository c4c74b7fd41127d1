from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PaymentMethod
from tests.support.auth import Auth
from tests.support.journeys import (
    add_card,
    create_plan,
    new_api_id,
    register,
    registered_consumer,
    subscribe,
)


async def _stripe_customer(settings: Settings, customer_id: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base)) as stripe:
        response = await stripe.get(
            f"/v1/customers/{customer_id}", auth=(settings.stripe_secret_key.get_secret_value(), "")
        )
    return dict(response.json())


async def test_first_card_becomes_default_here_and_at_stripe(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    headers = auth("consumer")
    consumer = await register(client, headers)
    card = await add_card(client, headers)
    assert card["id"].startswith("pm_")
    assert card["type"] == "card"
    assert card["is_default"] is True
    assert card["card"] == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    assert set(card) == {"id", "type", "card", "is_default", "created_at"}
    customer = await _stripe_customer(settings, consumer["stripe_customer_id"])
    assert customer["invoice_settings"]["default_payment_method"] == card["id"]  # type: ignore[index]


async def test_second_card_is_not_default_and_list_is_wrapped(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = await registered_consumer(client, auth)
    first = await add_card(client, headers)
    second = await add_card(client, headers)
    assert second["is_default"] is False
    listed = (await client.get("/api/v1/payment-methods", headers=headers)).json()
    assert [c["id"] for c in listed["payment_methods"]] == [first["id"], second["id"]]


async def test_set_default_moves_the_flag_and_the_stripe_default(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    headers = auth("consumer")
    consumer = await register(client, headers)
    first = await add_card(client, headers)
    second = await add_card(client, headers)
    response = await client.put(f"/api/v1/payment-methods/{second['id']}/default", headers=headers)
    assert response.status_code == 200
    assert response.json()["is_default"] is True
    listed = (await client.get("/api/v1/payment-methods", headers=headers)).json()["payment_methods"]
    assert {c["id"]: c["is_default"] for c in listed} == {first["id"]: False, second["id"]: True}
    customer = await _stripe_customer(settings, consumer["stripe_customer_id"])
    assert customer["invoice_settings"]["default_payment_method"] == second["id"]  # type: ignore[index]


async def test_declined_card_is_402_with_stripes_reason_and_nothing_stored(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.post(
        "/api/v1/payment-methods", json={"payment_method_id": "pm_card_visa_chargeDeclined"}, headers=headers
    )
    assert response.status_code == 402
    assert response.json()["code"] == "card_declined"
    assert "declined" in response.json()["error"]
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(PaymentMethod))).scalar_one() == 0


async def test_unknown_card_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.post(
        "/api/v1/payment-methods", json={"payment_method_id": "pm_doesnotexist"}, headers=headers
    )
    assert response.status_code == 422


async def test_malformed_payment_method_id_is_422_naming_the_field(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.post("/api/v1/payment-methods", json={"payment_method_id": "x"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "payment_method_id"


async def test_unregistered_caller_lists_no_cards_and_cannot_add_one(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = auth("consumer")
    assert (await client.get("/api/v1/payment-methods", headers=headers)).json() == {"payment_methods": []}
    response = await client.post(
        "/api/v1/payment-methods", json={"payment_method_id": "pm_card_visa"}, headers=headers
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_registered"


async def test_deleting_the_default_promotes_another_card(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = await registered_consumer(client, auth)
    first = await add_card(client, headers)
    second = await add_card(client, headers)
    response = await client.delete(f"/api/v1/payment-methods/{first['id']}", headers=headers)
    assert response.status_code == 204
    listed = (await client.get("/api/v1/payment-methods", headers=headers)).json()["payment_methods"]
    assert [(c["id"], c["is_default"]) for c in listed] == [(second["id"], True)]


async def test_deleting_the_only_card_of_a_paid_subscription_is_409(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    card = await add_card(client, headers)
    assert (await subscribe(client, headers, plan)).status_code == 201
    response = await client.delete(f"/api/v1/payment-methods/{card['id']}", headers=headers)
    assert response.status_code == 409
    assert response.json()["code"] == "payment_method_in_use"


async def test_deleting_the_only_card_without_paid_subscription_works(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = await registered_consumer(client, auth)
    card = await add_card(client, headers)
    assert (await client.delete(f"/api/v1/payment-methods/{card['id']}", headers=headers)).status_code == 204
    assert (await client.get("/api/v1/payment-methods", headers=headers)).json() == {"payment_methods": []}


async def test_another_consumers_card_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    owner = await registered_consumer(client, auth)
    card = await add_card(client, owner)
    stranger = await registered_consumer(client, auth)
    assert (await client.delete(f"/api/v1/payment-methods/{card['id']}", headers=stranger)).status_code == 404
    default = await client.put(f"/api/v1/payment-methods/{card['id']}/default", headers=stranger)
    assert default.status_code == 404


async def test_setup_intent_returns_a_client_secret(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = await registered_consumer(client, auth)
    response = await client.post("/api/v1/payment-methods/setup-intent", headers=headers)
    assert response.status_code == 200
    assert response.json()["client_secret"].startswith("seti_")


async def test_two_first_cards_added_at_once_make_one_default(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = await registered_consumer(client, auth)
    responses = await asyncio.gather(
        *(client.post("/api/v1/payment-methods", json={"payment_method_id": "pm_card_visa"}, headers=headers)
          for _ in range(2))
    )  # fmt: skip
    assert [r.status_code for r in responses] == [201, 201]
    cards = (await client.get("/api/v1/payment-methods", headers=headers)).json()["payment_methods"]
    assert len(cards) == 2
    assert sum(card["is_default"] for card in cards) == 1
