from __future__ import annotations

import asyncio

import httpx
import respx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.config import Settings
from app.dependencies import api_state
from app.models import Consumer
from tests.support.auth import Auth
from tests.support.stripe_wire import wire_customer


async def _stripe_customer(settings: Settings, customer_id: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base)) as stripe:
        return await stripe.get(
            f"/v1/customers/{customer_id}", auth=(settings.stripe_secret_key.get_secret_value(), "")
        )


async def _stripe_customers_of(settings: Settings, user_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base)) as stripe:
        response = await stripe.get(
            "/v1/customers", params={"limit": 100}, auth=(settings.stripe_secret_key.get_secret_value(), "")
        )
    return [c for c in response.json()["data"] if c["metadata"].get("user_id") == user_id]


async def test_register_creates_consumer_and_stripe_customer(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    headers = auth("consumer", user_id="alice", email="alice@example.com")
    response = await client.post("/api/v1/consumers/register", headers=headers)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"consumer_id", "stripe_customer_id", "email", "created_at"}
    assert body["email"] == "alice@example.com"
    assert body["stripe_customer_id"].startswith("cus_")
    customer = await _stripe_customer(settings, body["stripe_customer_id"])
    assert customer.status_code == 200
    assert customer.json()["email"] == "alice@example.com"
    assert customer.json()["metadata"]["consumer_id"] == body["consumer_id"]


async def test_register_twice_returns_the_same_consumer(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = auth("consumer")
    first = await client.post("/api/v1/consumers/register", headers=headers)
    second = await client.post("/api/v1/consumers/register", headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()


async def test_concurrent_registers_create_one_consumer_and_one_customer(
    client: httpx.AsyncClient, auth: Auth, settings: Settings, engine: AsyncEngine
) -> None:
    headers = auth("consumer", user_id="racer")
    responses = await asyncio.gather(
        *(client.post("/api/v1/consumers/register", headers=headers) for _ in range(6))
    )
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["stripe_customer_id"] for r in responses}) == 1
    async with engine.connect() as connection:
        count = (await connection.execute(select(func.count()).select_from(Consumer))).scalar_one()
    assert count == 1
    assert len(await _stripe_customers_of(settings, "racer")) == 1


async def test_register_works_for_creators_too(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post("/api/v1/consumers/register", headers=auth("creator"))
    assert response.status_code == 201


async def test_get_own_consumer(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = auth("consumer")
    registered = (await client.post("/api/v1/consumers/register", headers=headers)).json()
    response = await client.get(f"/api/v1/consumers/{registered['consumer_id']}", headers=headers)
    assert response.status_code == 200
    assert response.json() == registered


async def test_get_other_consumers_record_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    registered = (await client.post("/api/v1/consumers/register", headers=auth("consumer"))).json()
    response = await client.get(f"/api/v1/consumers/{registered['consumer_id']}", headers=auth("consumer"))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_admin_gets_any_consumer(client: httpx.AsyncClient, auth: Auth) -> None:
    registered = (await client.post("/api/v1/consumers/register", headers=auth("consumer"))).json()
    response = await client.get(f"/api/v1/consumers/{registered['consumer_id']}", headers=auth("admin"))
    assert response.status_code == 200
    assert response.json()["consumer_id"] == registered["consumer_id"]


async def test_register_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/consumers/register")
    assert response.status_code == 401


async def test_stripe_down_on_register_is_502_and_writes_nothing(
    settings: Settings, auth: Auth, engine: AsyncEngine
) -> None:
    from app.main import create_app
    from tests.support.settings import make_settings

    broken = make_settings(
        database_url=settings.database_url, redis_url=settings.redis_url, stripe_api_base="http://127.0.0.1:1"
    )
    app = create_app(broken)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        response = await http.post("/api/v1/consumers/register", headers=auth("consumer"))
    assert response.status_code == 502
    assert response.json()["code"] == "stripe_unreachable"
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(Consumer))).scalar_one() == 0


async def test_me_returns_the_callers_consumer_and_404_before_registering(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = auth("consumer", user_id="me-user")
    before = await client.get("/api/v1/consumers/me", headers=headers)
    assert before.status_code == 404
    assert before.json()["code"] == "not_registered"
    registered = await client.post("/api/v1/consumers/register", headers=headers)
    me = await client.get("/api/v1/consumers/me", headers=headers)
    assert me.status_code == 200
    assert me.json() == registered.json()


async def test_register_holds_no_pooled_connection_while_stripe_creates_the_customer(
    wire_app: FastAPI, wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    # A registration waiting on Stripe must not keep a database connection from other requests
    # (under load that starved the pool: 503 after the 1 s checkout timeout).
    lent_while_stripe_answered: list[int] = []

    def create_customer(request: httpx.Request) -> httpx.Response:
        pool = api_state(wire_app).resources.engine.pool
        assert isinstance(pool, QueuePool)
        lent_while_stripe_answered.append(pool.checkedout())
        return httpx.Response(200, json=wire_customer("cus_slow"))

    stripe_api.post("/v1/customers").mock(side_effect=create_customer)
    stripe_api.post("/v1/customers/cus_slow").mock(side_effect=create_customer)  # its email set
    response = await wire.post("/api/v1/consumers/register", headers=auth("consumer"))
    assert response.status_code == 201
    assert response.json()["stripe_customer_id"] == "cus_slow"
    assert lent_while_stripe_answered == [0, 0]
