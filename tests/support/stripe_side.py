"""Acting on the dev Stripe emulator as Stripe's own side would (the dashboard, the portal), and
reading its objects as plain JSON, for tests that need Stripe to hold a state our API did not make;
and the subscriber such tests start from."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PricingPlanVersion, Subscription
from tests.support.auth import Auth
from tests.support.journeys import on_cheaper_of_two


def emulator(settings: Settings) -> httpx.AsyncClient:
    key = settings.stripe_secret_key.get_secret_value()
    return httpx.AsyncClient(base_url=str(settings.stripe_api_base), auth=(key, ""))


async def price_of_plan(engine: AsyncEngine, plan_id: str) -> str:
    async with engine.connect() as connection:
        price = await connection.scalar(
            select(PricingPlanVersion.stripe_price_id).where(PricingPlanVersion.plan_id == uuid.UUID(plan_id))
        )
    assert price is not None
    return str(price)


async def change_price_at_stripe(
    settings: Settings, engine: AsyncEngine, subscription_id: str, plan_id: str
) -> dict[str, Any]:
    """The consumer changes plan in the Stripe portal or dashboard: Stripe's new snapshot."""
    async with engine.connect() as connection:
        row = (await connection.execute(select(Subscription).filter_by(id=uuid.UUID(subscription_id)))).one()
    price = await price_of_plan(engine, plan_id)
    async with emulator(settings) as http:
        answer = await http.post(
            f"/v1/subscriptions/{row.stripe_subscription_id}",
            data={"items[0][id]": row.stripe_subscription_item_id, "items[0][price]": price},
        )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def stripe_object(settings: Settings, path: str) -> dict[str, Any]:
    """What the emulator holds at `path` (e.g. `/v1/invoices/in_...`), as Stripe's JSON."""
    async with emulator(settings) as http:
        answer = await http.get(path)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def on_basic_of_two(
    client: httpx.AsyncClient, auth: Auth
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A consumer (their headers) subscribed at the emulator to Basic of an API that also has Pro;
    with the subscription and both plans as the API answered them."""
    headers, created, basic, pro = await on_cheaper_of_two(client, auth)
    assert created["status"] == "active", created
    return headers, created, basic, pro


def billing_price(snapshot: dict[str, Any], price: str) -> dict[str, Any]:
    """A Stripe subscription snapshot whose item bills `price` instead."""
    item = {**snapshot["items"]["data"][0], "price": {"id": price, "object": "price"}}
    return {**snapshot, "items": {**snapshot["items"], "data": [item]}}
