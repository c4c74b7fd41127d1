from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.idempotency.store import IN_FLIGHT_LEASE, Claimed, IdempotencyStore, request_fingerprint
from app.models import Consumer, IdempotencyKey, PricingPlan
from tests.support.auth import Auth

REGISTER = "/api/v1/consumers/register"


def _keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def _plans_path(api_id: str) -> str:
    return f"/api/v1/apis/{api_id}/plans"


async def _count(
    engine: AsyncEngine, model: type[PricingPlan] | type[Consumer] | type[IdempotencyKey]
) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(model))).scalar_one())


async def test_same_key_and_body_replays_the_stored_response(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = _keyed(auth("consumer"), "register-1")
    first = await client.post(REGISTER, headers=headers)
    second = await client.post(REGISTER, headers=headers)

    assert first.status_code == 201
    # Without the key a second register answers 200; the replay gives the first answer.
    assert second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


async def test_replayed_plan_creation_creates_one_plan(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("creator"), "plan-1")
    path = _plans_path(f"api-{uuid.uuid4().hex[:8]}")
    body = {"name": "Free", "type": "free"}
    responses = [await client.post(path, json=body, headers=headers) for _ in range(3)]

    assert [r.status_code for r in responses] == [201, 201, 201]
    assert responses[1].json() == responses[0].json() == responses[2].json()
    assert await _count(engine, PricingPlan) == 1


async def test_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("creator"), "plan-2")
    path = _plans_path(f"api-{uuid.uuid4().hex[:8]}")
    assert (
        await client.post(path, json={"name": "Free", "type": "free"}, headers=headers)
    ).status_code == 201

    response = await client.post(path, json={"name": "Other", "type": "free"}, headers=headers)

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "idempotency_key_reused"
    assert body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert await _count(engine, PricingPlan) == 1


async def test_same_key_on_another_path_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = _keyed(auth("creator"), "plan-3")
    body = {"name": "Free", "type": "free"}
    api_a, api_b = (_plans_path(f"api-{uuid.uuid4().hex[:8]}") for _ in range(2))
    assert (await client.post(api_a, json=body, headers=headers)).status_code == 201
    assert (await client.post(api_b, json=body, headers=headers)).status_code == 422


async def test_keys_belong_to_one_user(client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine) -> None:
    alice = await client.post(REGISTER, headers=_keyed(auth("consumer", user_id="alice"), "shared"))
    bob = await client.post(REGISTER, headers=_keyed(auth("consumer", user_id="bob"), "shared"))

    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["consumer_id"] != bob.json()["consumer_id"]
    assert await _count(engine, Consumer) == 2


async def test_expired_key_runs_the_request_again(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("consumer"), "register-expiring")
    assert (await client.post(REGISTER, headers=headers)).status_code == 201
    async with engine.begin() as connection:
        await connection.execute(
            update(IdempotencyKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    again = await client.post(REGISTER, headers=headers)

    assert again.status_code == 200  # run again: the consumer exists now
    assert "idempotent-replayed" not in again.headers
    async with engine.connect() as connection:
        expires_at = (await connection.execute(select(IdempotencyKey.expires_at))).scalar_one()
    assert expires_at - datetime.now(UTC) > timedelta(hours=23)


async def test_stored_key_expires_after_24_hours(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await client.post(REGISTER, headers=_keyed(auth("consumer"), "ttl"))
    async with engine.connect() as connection:
        row = (await connection.execute(select(IdempotencyKey.created_at, IdempotencyKey.expires_at))).one()
    assert row.expires_at - row.created_at == timedelta(hours=24)


async def test_failed_request_releases_its_key_for_a_retry(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("creator"), "plan-retry")
    path = _plans_path(f"api-{uuid.uuid4().hex[:8]}")
    invalid = await client.post(
        path, json={"name": "Bad", "type": "free", "rate_limit_per_minute": 0}, headers=headers
    )
    assert invalid.status_code == 422
    assert await _count(engine, IdempotencyKey) == 0

    fixed = await client.post(path, json={"name": "Good", "type": "free"}, headers=headers)
    assert fixed.status_code == 201


async def test_duplicate_while_the_first_is_in_flight_is_409(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("consumer", user_id="carol"), "in-flight")
    fingerprint = request_fingerprint("POST", REGISTER, b"", b"")
    claim = await IdempotencyStore(engine).claim("carol", "in-flight", "POST", REGISTER, fingerprint)
    assert isinstance(claim, Claimed)

    response = await client.post(REGISTER, headers=headers)

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"
    assert await _count(engine, Consumer) == 0


async def test_concurrent_duplicates_run_the_request_once(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("creator"), "plan-race")
    path = _plans_path(f"api-{uuid.uuid4().hex[:8]}")
    responses = await asyncio.gather(
        *(client.post(path, json={"name": "Free", "type": "free"}, headers=headers) for _ in range(4))
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 201
    assert set(statuses) <= {201, 409}
    assert await _count(engine, PricingPlan) == 1


async def test_abandoned_claim_is_taken_over_after_its_lease(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    headers = _keyed(auth("consumer", user_id="dave"), "abandoned")
    fingerprint = request_fingerprint("POST", REGISTER, b"", b"")
    await IdempotencyStore(engine).claim("dave", "abandoned", "POST", REGISTER, fingerprint)
    async with engine.begin() as connection:
        await connection.execute(
            update(IdempotencyKey).values(
                created_at=datetime.now(UTC) - IN_FLIGHT_LEASE - timedelta(seconds=1)
            )
        )

    response = await client.post(REGISTER, headers=headers)

    assert response.status_code == 201


async def test_malformed_key_is_422_naming_the_header(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(REGISTER, headers=_keyed(auth("consumer"), "k" * 256))
    assert response.status_code == 422
    assert response.json()["details"] == [
        {"field": "Idempotency-Key", "message": "must be 1-255 printable characters"}
    ]


async def test_keyed_post_without_a_token_is_401_and_stores_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post(REGISTER, headers={"Idempotency-Key": "anonymous"})
    assert response.status_code == 401
    assert await _count(engine, IdempotencyKey) == 0
