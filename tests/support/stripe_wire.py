"""The app wired to api.stripe.com answered by respx in Stripe's documented shapes (fixtures
`stripe_api`, `wire_app`, `wire`, registered for every test by `tests/conftest.py`), and the
Stripe objects and helpers the wire tests share."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.main import create_app
from tests.support import journeys
from tests.support.asgi import api_client
from tests.support.auth import Auth
from tests.support.settings import make_settings

NOW = 1_770_000_000
MONTH = 30 * 86400


def form_of(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


def wire_customer(customer_id: str = "cus_wire") -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "email": "wire@example.com",
        "invoice_settings": {"default_payment_method": None},
        "metadata": {},
    }


def wire_payment_method(payment_method_id: str = "pm_wire") -> dict[str, Any]:
    return {
        "id": payment_method_id,
        "object": "payment_method",
        "type": "card",
        "customer": "cus_wire",
        "card": {"brand": "mastercard", "last4": "4444", "exp_month": 4, "exp_year": 2031},
        "created": NOW,
    }


def wire_subscription(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_wire",
        "object": "subscription",
        "customer": "cus_wire",
        "status": status,
        "created": NOW,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "trial_end": None,
        "metadata": {},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_wire",
                    "object": "subscription_item",
                    "current_period_start": NOW,
                    "current_period_end": NOW + MONTH,
                    "price": {"id": "price_wire_1", "object": "price"},
                }
            ],
        },
        "latest_invoice": {
            "id": "in_wire",
            "object": "invoice",
            "confirmation_secret": {"client_secret": "pi_wire_secret_abc", "type": "payment_intent"},
        },
        **extra,
    }


@pytest.fixture
def stripe_api() -> Iterator[respx.MockRouter]:
    """Stripe at api.stripe.com: customers, products, prices, cards; tests add the rest."""
    prices = itertools.count(1)
    with respx.mock(base_url="https://api.stripe.com", assert_all_called=False) as mock:
        mock.post("/v1/customers").respond(200, json=wire_customer())
        mock.post("/v1/customers/cus_wire").respond(200, json=wire_customer())
        mock.post("/v1/products").respond(200, json={"id": "prod_wire", "object": "product"})
        mock.post("/v1/prices").mock(
            side_effect=lambda request: httpx.Response(
                200,
                json={
                    "id": f"price_wire_{next(prices)}",
                    "object": "price",
                    "product": "prod_wire",
                    "currency": "usd",
                    "unit_amount_decimal": "2900",
                },
            )
        )
        mock.post("/v1/payment_methods/pm_wire/attach").respond(200, json=wire_payment_method())
        yield mock


@pytest.fixture
async def wire_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app talking to api.stripe.com (mocked), with the SDK's own retries on."""
    wired = make_settings(
        database_url=settings.database_url, redis_url=settings.redis_url, stripe_max_network_retries=2
    )
    application = create_app(wired)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def wire(
    wire_app: FastAPI, engine: AsyncEngine, stripe_api: respx.MockRouter
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(wire_app) as http:
        yield http


async def consumer_with_card(wire: httpx.AsyncClient, auth: Auth) -> dict[str, str]:
    """A new consumer with the card the wire fixture's Stripe knows (`pm_wire`): its headers."""
    return await journeys.consumer_with_card(wire, auth, "pm_wire")


class IdempotentStripe:
    """Stripe's idempotency layer over one respx route, as its API reference describes it: the
    first request with a key runs (`answer`) and its answer is saved; one sent while that first
    still runs is answered 409 `idempotency_key_in_use` and nothing is saved for it; one sent
    after, with the same parameters, gets the saved answer (`Idempotent-Replayed: true`), with
    other parameters 400 `idempotency_error`. `lose_answers` drops that many answers (the first
    ones) on the way back, as a network failure after Stripe has done the work would."""

    def __init__(
        self, answer: Callable[[httpx.Request], Awaitable[httpx.Response]], *, lose_answers: int = 0
    ) -> None:
        self._answer = answer
        self._saved: dict[str, tuple[bytes, httpx.Response]] = {}
        self._running: set[str] = set()
        self._lose = lose_answers
        self.executed = 0  # requests that ran (not replayed, not refused)
        self.in_use = 0  # 409 idempotency_key_in_use answers given
        self._changed = asyncio.Condition()

    @property
    def running(self) -> bool:
        return bool(self._running)

    async def reached(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` (of `running`, `in_use`) holds."""
        async with self._changed:
            await self._changed.wait_for(condition)

    async def _changes(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if key in self._running:
            self.in_use += 1
            await self._changes()
            return httpx.Response(409, json=_key_in_use(key))
        if key in self._saved:
            body, first = self._saved[key]
            if body != request.content:
                return httpx.Response(400, json=_key_reused(key))
            return self._delivered(
                httpx.Response(first.status_code, json=first.json(), headers={"Idempotent-Replayed": "true"}),
                request,
            )
        self._running.add(key)
        await self._changes()
        try:
            answered = await self._answer(request)
            self.executed += 1
        finally:
            self._running.discard(key)
        self._saved[key] = (request.content, answered)
        return self._delivered(answered, request)

    def _delivered(self, response: httpx.Response, request: httpx.Request) -> httpx.Response:
        if self._lose > 0:
            self._lose -= 1
            raise httpx.ConnectError("connection reset after Stripe answered", request=request)
        return response


def _key_in_use(key: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "idempotency_key_in_use",
            "doc_url": "https://stripe.com/docs/error-codes/idempotency-key-in-use",
            "message": "There is currently another in-progress request using this Idempotent Key (that "
            f"probably means you submitted twice, and the other request is still going through): {key}. "
            "Please try again later.",
            "type": "invalid_request_error",
        }
    }


def _key_reused(key: str) -> dict[str, Any]:
    return {
        "error": {
            "message": "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a different "
            "request.",
            "type": "idempotency_error",
        }
    }
