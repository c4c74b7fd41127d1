"""Small helpers that walk the API the way the frontend does (register, add a card, plans)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.auth import Auth as Auth  # also importable from here, as before


def new_api_id() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


async def create_plan(
    client: httpx.AsyncClient, creator: dict[str, str], api_id: str, **terms: Any
) -> dict[str, Any]:
    body = {"name": terms.pop("name", "Plan"), "type": terms.pop("type", "subscription"), **terms}
    if body["type"] == "subscription":
        body.setdefault("monthly_price", "29")
    response = await client.post(f"/api/v1/apis/{api_id}/plans", json=body, headers=creator)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def register(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/api/v1/consumers/register", headers=headers)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def add_card(
    client: httpx.AsyncClient, headers: dict[str, str], payment_method_id: str = "pm_card_visa"
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/payment-methods", json={"payment_method_id": payment_method_id}, headers=headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def subscribe(
    client: httpx.AsyncClient, headers: dict[str, str], plan: dict[str, Any], **extra: Any
) -> httpx.Response:
    body = {"api_id": plan["api_id"], "pricing_plan_id": plan["id"], **extra}
    return await client.post("/api/v1/subscriptions", json=body, headers=headers)


# Where Checkout sends the consumer back to, paid or not.
CHECKOUT_SUCCESS_URL = "https://market.example/ok"
CHECKOUT_CANCEL_URL = "https://market.example/no"


async def subscribe_through_checkout(
    client: httpx.AsyncClient, headers: dict[str, str], plan: dict[str, Any]
) -> httpx.Response:
    """Subscribe as the frontend does for a consumer without a card: through a Checkout page."""
    return await subscribe(
        client,
        headers,
        plan,
        checkout=True,
        success_url=CHECKOUT_SUCCESS_URL,
        cancel_url=CHECKOUT_CANCEL_URL,
    )


async def registered_consumer(client: httpx.AsyncClient, auth: Auth) -> dict[str, str]:
    """A new consumer, registered (without a card): its headers."""
    headers = auth("consumer")
    await register(client, headers)
    return headers


async def consumer_with_card(
    client: httpx.AsyncClient, auth: Auth, payment_method_id: str = "pm_card_visa"
) -> dict[str, str]:
    """A new consumer, registered, with a default card: its headers."""
    headers = await registered_consumer(client, auth)
    await add_card(client, headers, payment_method_id)
    return headers


async def stripe_customer_with_card(client: httpx.AsyncClient, auth: Auth) -> tuple[dict[str, str], str]:
    """A new consumer, registered, with a default card: (its headers, its Stripe customer id)."""
    headers = auth("consumer")
    customer = (await register(client, headers))["stripe_customer_id"]
    await add_card(client, headers)
    return headers, str(customer)


async def subscribed_consumer(
    client: httpx.AsyncClient, auth: Auth, plan: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """A new consumer, registered with a card, subscribed to `plan`: (its headers, the subscription)."""
    headers = await consumer_with_card(client, auth)
    created = await subscribe(client, headers, plan)
    assert created.status_code == 201, created.text
    return headers, dict(created.json())


async def on_cheaper_of_two(
    client: httpx.AsyncClient,
    auth: Auth,
    prices: tuple[str, str] = ("10", "30"),
    payment_method_id: str = "pm_card_visa",
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A consumer with a card subscribed to Basic of an API that also has a dearer Pro: (their
    headers, the subscription, Basic, Pro) as the API answered them."""
    creator = auth("creator")
    api_id = new_api_id()
    basic = await create_plan(client, creator, api_id, name="Basic", monthly_price=prices[0])
    pro = await create_plan(client, creator, api_id, name="Pro", monthly_price=prices[1])
    headers = await consumer_with_card(client, auth, payment_method_id)
    created = (await subscribe(client, headers, basic)).json()
    return headers, dict(created), basic, pro


async def preview_upgrade(
    client: httpx.AsyncClient, headers: dict[str, str], subscription_id: str, plan: dict[str, Any]
) -> httpx.Response:
    return await client.get(
        f"/api/v1/subscriptions/{subscription_id}/upgrade/preview",
        params={"new_pricing_plan_id": plan["id"]},
        headers=headers,
    )


async def upgrade(
    client: httpx.AsyncClient, headers: dict[str, str], subscription_id: str, plan: dict[str, Any]
) -> httpx.Response:
    return await client.put(
        f"/api/v1/subscriptions/{subscription_id}/upgrade",
        json={"new_pricing_plan_id": plan["id"]},
        headers=headers,
    )
