"""Odd input is a 4xx in the one error format, never a 500; bodies are bounded (413, unread)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.support import rows
from tests.support.auth import Auth, bearer
from tests.support.factories import TokenFactory, sign_webhook
from tests.support.journeys import new_api_id

NUL = "\x00"


def _assert_422_naming(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in [detail["field"] for detail in body["details"]], body
    assert set(body) >= {"error", "code", "request_id"}


def _plan(**fields: Any) -> dict[str, Any]:
    return {"name": "Basic", "type": "free", **fields}


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        (_plan(name=f"Ba{NUL}sic"), "name"),
        (_plan(features={f"support{NUL}": True}), "features.support\\u0000"),
        (_plan(features={"support": f"24{NUL}7"}), "features.support"),
        (_plan(features={"tiers": [{"label": f"a{NUL}"}]}), "features.tiers.0.label"),
    ],
)
async def test_nul_characters_in_a_plan_are_422_naming_the_field(
    client: httpx.AsyncClient, auth: Auth, plan: dict[str, Any], field: str
) -> None:
    response = await client.post(f"/api/v1/apis/{new_api_id()}/plans", json=plan, headers=auth("creator"))
    _assert_422_naming(response, field)


async def test_lone_surrogate_in_a_json_body_is_422_naming_the_field(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    body = b'{"name": "Basic \\ud800", "type": "free"}'
    headers = {**auth("creator"), "Content-Type": "application/json"}
    response = await client.post(f"/api/v1/apis/{new_api_id()}/plans", content=body, headers=headers)
    _assert_422_naming(response, "name")


async def test_over_long_strings_in_features_are_422(client: httpx.AsyncClient, auth: Auth) -> None:
    url = f"/api/v1/apis/{new_api_id()}/plans"
    huge_value = await client.post(url, json=_plan(features={"note": "x" * 5000}), headers=auth("creator"))
    _assert_422_naming(huge_value, "features.note")
    long_value = await client.post(url, json=_plan(features={"note": "x" * 501}), headers=auth("creator"))
    _assert_422_naming(long_value, "features")
    long_key = await client.post(url, json=_plan(features={"k" * 600: True}), headers=auth("creator"))
    assert long_key.status_code == 422, long_key.text


async def test_features_have_a_bounded_size_and_depth(client: httpx.AsyncClient, auth: Auth) -> None:
    url = f"/api/v1/apis/{new_api_id()}/plans"
    too_many = await client.post(
        url, json=_plan(features={f"f{i}": True for i in range(300)}), headers=auth("creator")
    )
    _assert_422_naming(too_many, "features")
    too_deep = await client.post(
        url, json=_plan(features={"a": {"b": {"c": {"d": {"e": 1}}}}}), headers=auth("creator")
    )
    _assert_422_naming(too_deep, "features")
    nested_json: Any = 1
    for _ in range(200):
        nested_json = [nested_json]
    deep_body = await client.post(url, json=_plan(features={"x": nested_json}), headers=auth("creator"))
    assert deep_body.status_code == 422, deep_body.text
    fine = await client.post(
        url,
        json=_plan(features={"priority_support": True, "sla": {"uptime": "99.9%"}}),
        headers=auth("creator"),
    )
    assert fine.status_code == 201, fine.text
    assert fine.json()["features"] == {"priority_support": True, "sla": {"uptime": "99.9%"}}


async def test_nul_in_a_custom_invoice_line_description_is_422(
    client: httpx.AsyncClient, auth: Auth, engine: Any
) -> None:
    consumer = rows.consumer(stripe_customer_id=f"cus_{uuid.uuid4().hex[:14]}")
    await rows.add(engine, consumer)
    body = {
        "consumer_id": str(consumer.id),
        "currency": "usd",
        "lines": [{"description": f"Workshop{NUL}", "quantity": 1, "unit_amount": 100}],
    }
    response = await client.post("/api/v1/admin/invoices", json=body, headers=auth("admin"))
    _assert_422_naming(response, "lines.0.description")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/apis/we%00ather/plans", "api_id"),
        ("/api/v1/payment-methods/pm_%00x/default", "payment_method_id"),
        ("/api/v1/invoices?cursor=ab%00c", "cursor"),
        ("/api/v1/subscriptions?status=" + "a" * 2000, "status"),
    ],
)
async def test_nul_or_over_long_path_and_query_values_are_422_naming_them(
    client: httpx.AsyncClient, auth: Auth, url: str, field: str
) -> None:
    method = "PUT" if url.endswith("/default") else "GET"
    response = await client.request(method, url, headers=auth("consumer"))
    _assert_422_naming(response, field)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "user-" + "x" * 300},
        {"sub": f"user{NUL}1"},
        {"email": f"a{NUL}@example.com"},
        {"email": "a" * 400 + "@example.com"},
        {"custom:user_type": ["admin"]},
        {"custom:user_type": {"role": "admin"}},
    ],
)
async def test_token_claims_the_database_cannot_store_are_401(
    client: httpx.AsyncClient, tokens: TokenFactory, claims: dict[str, Any]
) -> None:
    token = tokens.make(**claims)
    response = await client.post("/api/v1/consumers/register", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"


async def test_api_body_over_the_limit_is_413_by_its_declared_length(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    body = b'{"name": "' + b"x" * settings.api_max_body_bytes + b'", "type": "free"}'
    headers = {**auth("creator"), "Content-Type": "application/json"}
    response = await client.post(f"/api/v1/apis/{new_api_id()}/plans", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"


async def test_streamed_body_over_the_limit_is_413_without_being_read_whole(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    chunk = b"x" * 65536
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 64 MiB if it were all read
            pulled += len(chunk)
            yield chunk

    headers = {**auth("creator"), "Content-Type": "application/json"}
    response = await client.post(f"/api/v1/apis/{new_api_id()}/plans", content=endless(), headers=headers)
    assert response.status_code == 413, response.text
    assert pulled <= settings.api_max_body_bytes + len(chunk)


async def test_webhook_has_its_own_larger_body_limit(client: httpx.AsyncClient, settings: Settings) -> None:
    large_event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.created",
        "created": 1772323200,
        "data": {"object": {"id": "in_1", "object": "invoice", "lines": ["x" * 1000] * 400}},
    }
    body, header = sign_webhook(large_event)
    assert settings.api_max_body_bytes < len(body) < settings.webhook_max_body_bytes
    accepted = await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
    assert accepted.status_code == 200, accepted.text

    huge, header = sign_webhook(b"{" + b" " * settings.webhook_max_body_bytes + b"}")
    refused = await client.post("/webhooks/stripe", content=huge, headers={"Stripe-Signature": header})
    assert refused.status_code == 413
    assert refused.json()["code"] == "payload_too_large"
