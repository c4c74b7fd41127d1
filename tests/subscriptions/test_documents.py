"""The lean read path (rows straight to JSON) answers exactly the bytes the pydantic schema writes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.models import Consumer, PricingPlan, PricingPlanVersion, Subscription
from app.pagination import encode_cursor
from app.subscriptions import documents
from app.subscriptions.router import SubscriptionListRoute
from app.subscriptions.schemas import SubscriptionList
from app.subscriptions.service import subscription_out
from tests.support import rows
from tests.support.asgi import fields_named, lean_and_declared, matched_by
from tests.support.auth import Auth, bearer
from tests.support.factories import TokenFactory
from tests.support.rows import T0


@pytest.fixture
def lean_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a document leaves through the schema rather than orjson."""

    def refuse(document: object, schema: object) -> bytes:
        raise AssertionError(f"the lean path fell back to {schema} for {document!r}")

    monkeypatch.setattr(documents, "through_schema", refuse)


def _plan(
    api_row: Any, plan_type: str, currency: str, **terms: Any
) -> tuple[PricingPlan, PricingPlanVersion]:
    plan_row, version = rows.plan(
        api_row,
        plan_type=plan_type,
        currency=currency,
        monthly_amount=terms.pop("monthly_amount", None),
        price_per_call=terms.pop("price_per_call", None),
    )
    version.call_limit = terms.pop("call_limit", None)
    for name, value in terms.items():
        setattr(plan_row, name, value)
    return plan_row, version


async def _every_shape(engine: AsyncEngine, consumer_row: Consumer) -> None:
    """One subscription of each shape the list shows, a second apart, newest last."""
    creator = "creator-documents"
    shapes: list[tuple[tuple[PricingPlan, PricingPlanVersion], dict[str, Any]]] = []
    apis = [rows.api(creator) for _ in range(8)]
    # Free: no price, no Stripe ids, nothing but the period.
    shapes.append(
        (
            _plan(apis[0], "free", "usd", name="Free", features={}),
            {"current_period_start": T0, "current_period_end": T0 + timedelta(days=31)},
        )
    )
    # Trial of a paid plan: limits, features of every JSON kind, trial days and end.
    shapes.append(
        (
            _plan(
                apis[1],
                "subscription",
                "usd",
                monthly_amount=999,
                call_limit=1000,
                rate_limit_per_minute=60,
                rate_limit_per_day=5000,
                rate_limit_per_month=100_000,
                trial_period_days=14,
                features={"priority_support": True, "seats": 3, "ratio": 0.25, "tags": ["a", "é"], "x": None},
            ),
            {
                "status": "trial",
                "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}",
                "api_key_id": "key_trial",
                "trial_end": T0 + timedelta(days=14, microseconds=120_000),
                "current_period_start": T0,
                "current_period_end": T0 + timedelta(days=14),
            },
        )
    )
    # Paid with a plan, whole major units, a zero-decimal currency.
    shapes.append(
        (
            _plan(apis[2], "subscription", "jpy", monthly_amount=3000, features={"n": 1}),
            {
                "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}",
                "api_key_id": "key_jpy",
                "current_period_start": T0 + timedelta(microseconds=1),
                "current_period_end": T0 + timedelta(days=31),
            },
        )
    )
    # Paid per call, prices of many digits (and one below a hundred-millionth of a unit's cent).
    for api_row, price in ((apis[3], Decimal("0.0015")), (apis[4], Decimal("0.00000001"))):
        shapes.append(
            (
                _plan(api_row, "pay_per_use", "usd", price_per_call=price, features={"metered": True}),
                {"stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}"},
            )
        )
    # Cancelled: every end stamp set, cancel at period end, a three-decimal currency.
    shapes.append(
        (
            _plan(apis[5], "subscription", "kwd", monthly_amount=12_340, is_active=False, features={}),
            {
                "status": "cancelled",
                "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}",
                "cancel_at_period_end": True,
                "cancelled_at": T0 + timedelta(days=3, seconds=5, microseconds=500_000),
                "expires_at": T0 + timedelta(days=31),
            },
        )
    )
    # Waiting for its checkout page (shown), and an active one that kept an old URL (hidden).
    shapes.append(
        (
            _plan(apis[6], "subscription", "eur", monthly_amount=2900, features={}),
            {"status": "incomplete", "checkout_url": "https://checkout.stripe.com/c/pay/cs_test_1"},
        )
    )
    shapes.append(
        (
            _plan(apis[7], "subscription", "eur", monthly_amount=2950, features={}),
            {"checkout_url": "https://checkout.stripe.com/c/pay/cs_test_2", "api_key_id": None},
        )
    )
    added: list[object] = [*apis]
    for n, ((plan_row, version), fields) in enumerate(shapes):
        moment = T0 + timedelta(seconds=n)
        added += [plan_row, version]
        added.append(
            rows.subscription(consumer_row, plan_row, started_at=moment, created_at=moment, **fields)
        )
    await rows.add(engine, *added)


async def _schema_rows(engine: AsyncEngine, consumer_id: uuid.UUID) -> list[Any]:
    """The same rows through the ORM, newest first, as the schema's path reads them."""
    statement = (
        select(Subscription, PricingPlan, PricingPlanVersion)
        .join(PricingPlan, PricingPlan.id == Subscription.pricing_plan_id)
        .join(
            PricingPlanVersion,
            and_(
                PricingPlanVersion.plan_id == Subscription.pricing_plan_id,
                PricingPlanVersion.version == Subscription.plan_version,
            ),
        )
        .where(Subscription.consumer_id == consumer_id)
        .order_by(Subscription.created_at.desc(), Subscription.id.desc())
    )
    async with AsyncSession(engine) as session:
        return list((await session.execute(statement)).all())


@pytest.fixture
async def every_shape(engine: AsyncEngine, auth: Auth) -> tuple[dict[str, str], list[Any]]:
    """A consumer holding a subscription of each shape: (their headers, the rows as the schema's
    path reads them, newest first)."""
    consumer_row = rows.consumer()
    await rows.add(engine, consumer_row)
    await _every_shape(engine, consumer_row)
    expected = await _schema_rows(engine, consumer_row.id)
    assert len(expected) == 8
    return auth("consumer", user_id=consumer_row.user_id), expected


@pytest.mark.usefixtures("lean_only")
async def test_subscription_list_json_is_the_schemas_bytes_for_every_shape(
    client: httpx.AsyncClient, every_shape: tuple[dict[str, str], list[Any]]
) -> None:
    headers, expected = every_shape

    response = await client.get("/api/v1/subscriptions", headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    schema = SubscriptionList(subscriptions=[subscription_out(*row) for row in expected], next_cursor=None)
    assert response.content == schema.model_dump_json().encode()


@pytest.mark.usefixtures("lean_only")
async def test_subscription_list_pages_are_the_schemas_bytes_with_the_same_cursor(
    client: httpx.AsyncClient, every_shape: tuple[dict[str, str], list[Any]]
) -> None:
    headers, expected = every_shape
    first = await client.get("/api/v1/subscriptions", params={"limit": 4}, headers=headers)
    cursor = encode_cursor(expected[3][0])
    second = await client.get("/api/v1/subscriptions", params={"limit": 4, "cursor": cursor}, headers=headers)

    pages = [
        SubscriptionList(subscriptions=[subscription_out(*row) for row in expected[:4]], next_cursor=cursor),
        SubscriptionList(subscriptions=[subscription_out(*row) for row in expected[4:]], next_cursor=None),
    ]
    assert first.content == pages[0].model_dump_json().encode()
    assert second.content == pages[1].model_dump_json().encode()


@pytest.mark.usefixtures("lean_only")
async def test_one_subscription_json_is_the_schemas_bytes_for_every_shape(
    client: httpx.AsyncClient, every_shape: tuple[dict[str, str], list[Any]]
) -> None:
    headers, expected = every_shape
    for row in expected:
        response = await client.get(f"/api/v1/subscriptions/{row[0].id}", headers=headers)
        assert response.status_code == 200, response.text
        assert response.content == subscription_out(*row).model_dump_json().encode()


async def test_features_beyond_64_bit_integers_are_still_the_schemas_bytes(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    consumer_row = rows.consumer()
    api_row = rows.api("creator-big")
    plan_row, version = _plan(api_row, "free", "usd", features={"quota": 2**70, "small": 1})
    subscription_row = rows.subscription(consumer_row, plan_row)
    await rows.add(engine, consumer_row, api_row, plan_row, version, subscription_row)
    headers = auth("consumer", user_id=consumer_row.user_id)
    (row,) = await _schema_rows(engine, consumer_row.id)

    listed = await client.get("/api/v1/subscriptions", headers=headers)
    one = await client.get(f"/api/v1/subscriptions/{subscription_row.id}", headers=headers)

    schema = SubscriptionList(subscriptions=[subscription_out(*row)], next_cursor=None)
    assert listed.content == schema.model_dump_json().encode()
    assert one.content == subscription_out(*row).model_dump_json().encode()


async def test_another_consumers_subscription_is_404_on_the_lean_path(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    owner = rows.consumer()
    api_row = rows.api("creator-404")
    plan_row, version = _plan(api_row, "free", "usd", features={})
    subscription_row = rows.subscription(owner, plan_row)
    await rows.add(engine, owner, api_row, plan_row, version, subscription_row)

    response = await client.get(f"/api/v1/subscriptions/{subscription_row.id}", headers=auth("consumer"))
    listed = await client.get("/api/v1/subscriptions", headers=auth("consumer"))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert listed.json() == {"subscriptions": [], "next_cursor": None}


LIST_QUERIES = [
    "",
    "status=active",
    "status=cancelled",
    "limit=3",
    "limit=3&limit=100",
    "limit=0",
    "limit=101",
    "limit=abc",
    "limit=",
    "status=bogus",
    "status=",
    "status=bogus&limit=0&cursor=" + "x" * 201,
    "cursor=",
    "cursor=not-a-cursor",
    "unknown=1",
]


async def test_the_lean_list_route_answers_byte_for_byte_what_the_declared_route_answers(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Auth,
    tokens: TokenFactory,
    every_shape: tuple[dict[str, str], list[Any]],
) -> None:
    """The list's route matched ahead of the others (no routing walk, parameters read by hand, a
    pooled read connection) and the declared route it stands in for: the same status, headers and
    bytes for good and bad requests alike (pages and their cursors, 422s naming each bad query
    parameter, 401 without or with a bad token, another caller's empty list)."""
    lean = app.router.routes[2]
    assert isinstance(lean, SubscriptionListRoute)
    owner, expected = every_shape
    cursor = encode_cursor(expected[3][0])
    callers = [owner, auth("creator"), {}, {"Authorization": "Bearer not-a-jwt"}]
    callers.append(bearer(tokens.make(expires_in=timedelta(minutes=-1))))
    queries = [*LIST_QUERIES, f"limit=4&cursor={cursor}", f"status=active&limit=2&cursor={cursor}"]

    async def answers() -> list[tuple[int, list[tuple[str, str]], bytes]]:
        seen = []
        for caller in callers:
            for query in queries:
                headers = {"x-request-id": "compare", **caller}
                response = await client.get(f"/api/v1/subscriptions?{query}", headers=headers)
                seen.append((response.status_code, response.headers.multi_items(), response.content))
        return seen

    with_lean, declared = await lean_and_declared(app, lean, answers)

    assert with_lean == declared
    assert {status for status, _, _ in with_lean} == {200, 401, 422}
    assert fields_named(with_lean) == {"status", "limit", "cursor"}
    assert (
        with_lean[0][2]
        == SubscriptionList(subscriptions=[subscription_out(*row) for row in expected], next_cursor=None)
        .model_dump_json()
        .encode()
    )


def test_the_lean_list_route_matches_only_a_get_of_the_list(app: FastAPI) -> None:
    """Anything else goes on to the declared routes (a POST subscribes, a trailing slash is
    their redirect, a subscription's id its own route)."""
    lean = app.router.routes[2]
    assert isinstance(lean, SubscriptionListRoute)
    base = "/api/v1/subscriptions"
    paths = (base, base + "/", base + "/x", "/subscriptions")
    assert matched_by(lean, ("GET", "POST", "HEAD"), paths) == [("GET", base)]
