"""Registration against Stripe's idempotency rules (respx in their shapes): a duplicate sent while
the first still creates the customer, and a retry after Stripe created one we did not store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import respx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.main import create_app
from app.models import Consumer
from tests.support.asgi import api_client
from tests.support.auth import Auth
from tests.support.settings import make_settings
from tests.support.stripe_wire import IdempotentStripe, form_of, wire_customer

REGISTER = "/api/v1/consumers/register"
GIVE_UP_AFTER = 15.0  # a test fails rather than hang


async def _consumers(engine: AsyncEngine) -> list[tuple[str, str | None, str | None]]:
    async with engine.connect() as connection:
        found = await connection.execute(
            select(Consumer.user_id, Consumer.email, Consumer.stripe_customer_id)
        )
        return [(row.user_id, row.email, row.stripe_customer_id) for row in found]


async def _running(stripe: IdempotentStripe) -> None:
    async with asyncio.timeout(GIVE_UP_AFTER):
        await stripe.reached(lambda: stripe.running)


def _slow_create(
    release: asyncio.Event, customer_id: str
) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    async def create(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={**wire_customer(customer_id), "email": None})

    return create


async def test_a_registration_sent_while_the_first_still_creates_the_customer_gets_the_same_consumer(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    release = asyncio.Event()
    stripe = IdempotentStripe(_slow_create(release, "cus_once"))
    stripe_api.post("/v1/customers").mock(side_effect=stripe)
    email_route = stripe_api.post("/v1/customers/cus_once").respond(200, json=wire_customer("cus_once"))
    headers = auth("consumer", user_id="double-click", email="dc@example.com")

    first = asyncio.create_task(wire.post(REGISTER, headers=headers))
    await _running(stripe)
    second = asyncio.create_task(wire.post(REGISTER, headers=headers))
    # The SDK's own retries of the 409 (1 + 2 sends) are spent: the later call waits on beyond them.
    beyond_the_sdk = asyncio.create_task(stripe.reached(lambda: stripe.in_use > 3))
    await asyncio.wait([second, beyond_the_sdk], timeout=GIVE_UP_AFTER, return_when=asyncio.FIRST_COMPLETED)
    beyond_the_sdk.cancel()
    release.set()
    responses = await asyncio.gather(first, second)

    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    assert {r.json()["stripe_customer_id"] for r in responses} == {"cus_once"}
    assert responses[0].json() == responses[1].json()
    assert stripe.executed == 1
    assert await _consumers(engine) == [("double-click", "dc@example.com", "cus_once")]
    assert {form_of(call.request)["email"][0] for call in email_route.calls} == {"dc@example.com"}


async def test_a_registration_retried_with_a_new_email_after_stripe_created_the_customer_keeps_that_customer(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    async def create(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**wire_customer("cus_kept"), "email": None})

    # Stripe creates the customer, but no answer reaches us, nor those of the SDK's two retries.
    stripe = IdempotentStripe(create, lose_answers=3)
    stripe_api.post("/v1/customers").mock(side_effect=stripe)
    email_route = stripe_api.post("/v1/customers/cus_kept").mock(
        side_effect=lambda request: httpx.Response(
            200, json={**wire_customer("cus_kept"), "email": form_of(request)["email"][0]}
        )
    )
    failed = await wire.post(REGISTER, headers=auth("consumer", user_id="renamed", email="old@example.com"))
    assert failed.status_code == 502
    assert failed.json()["code"] == "stripe_unreachable"
    assert await _consumers(engine) == []

    # Within Stripe's 24 h, with a token that now carries another email.
    again = await wire.post(REGISTER, headers=auth("consumer", user_id="renamed", email="new@example.com"))
    assert again.status_code == 201, again.text
    assert again.json()["stripe_customer_id"] == "cus_kept"
    assert again.json()["email"] == "new@example.com"
    assert stripe.executed == 1
    assert await _consumers(engine) == [("renamed", "new@example.com", "cus_kept")]
    assert [form_of(call.request)["email"][0] for call in email_route.calls] == ["new@example.com"]


async def test_the_customer_create_sends_only_what_derives_from_the_user(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    response = await wire.post(REGISTER, headers=auth("consumer", user_id="keyed", email="k@example.com"))
    assert response.status_code == 201
    [create] = [call for call in stripe_api.calls if call.request.url.path == "/v1/customers"]
    form = form_of(create.request)
    assert set(form) == {"metadata[user_id]", "metadata[consumer_id]"}
    assert form["metadata[consumer_id]"] == [response.json()["consumer_id"]]
    assert create.request.headers["Idempotency-Key"] == f"customer-create:{response.json()['consumer_id']}"


async def test_a_key_still_in_use_after_the_wait_is_503_in_progress_and_only_the_first_registers(
    settings: Settings, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    release = asyncio.Event()
    stripe = IdempotentStripe(_slow_create(release, "cus_stuck"))
    stripe_api.post("/v1/customers").mock(side_effect=stripe)
    stripe_api.post("/v1/customers/cus_stuck").respond(200, json=wire_customer("cus_stuck"))
    impatient: FastAPI = create_app(
        make_settings(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            stripe_in_flight_wait_seconds=0.6,
        )
    )
    headers = auth("consumer", user_id="stuck")
    async with impatient.router.lifespan_context(impatient), api_client(impatient) as http:
        first = asyncio.create_task(http.post(REGISTER, headers=headers))
        await _running(stripe)
        second = await http.post(REGISTER, headers=headers)
        release.set()
        assert (await first).status_code == 201
    assert second.status_code == 503
    assert second.json()["code"] == "stripe_request_in_progress"
    assert stripe.in_use >= 2  # sent again after the first 409, not given up at once
    assert await _consumers(engine) == [("stuck", "stuck@example.com", "cus_stuck")]
