"""The check's hot path does less, not something else: its lean parse accepts what the model
accepts, its JSON is the schema's byte for byte, and a warm check costs one Redis command and no
database read."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dependencies import api_state
from app.entitlements.schemas import CheckRequest, CheckResult, _lean_check
from app.entitlements.service import CheckAnswer
from tests.support.asgi import running
from tests.support.entitlement_data import (
    GATEWAY,
    PERIOD_END,
    PERIOD_START,
    check_body,
    entitled,
    gateway_settings,
)

SUB = "8c1f3e0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
BODIES: list[Any] = [
    {"api_key_id": "key_1", "api_id": "demo-weather"},
    {"api_key_id": "key_1", "api_id": "demo-weather", "track": 1},
    {"api_key_id": "k" * 255, "api_id": "a" * 64, "track": 1_000_000},
    {"subscription_id": SUB, "api_id": "demo_weather", "track": 7},
    {"subscription_id": SUB.upper(), "api_id": "x"},
    {"subscription_id": SUB, "api_key_id": None, "api_id": "x", "track": None},
    {"api_key_id": "key_1", "subscription_id": None, "api_id": "x"},
    # Each of these the model refuses, or reads with a conversion: the lean parse leaves them to it.
    {"api_key_id": "key_1", "subscription_id": SUB, "api_id": "x"},
    {"api_id": "x"},
    {"api_key_id": "", "api_id": "x"},
    {"api_key_id": "k" * 256, "api_id": "x"},
    {"api_key_id": 5, "api_id": "x"},
    {"api_key_id": "key_1", "api_id": ""},
    {"api_key_id": "key_1", "api_id": "a" * 65},
    {"api_key_id": "key_1", "api_id": "a b"},
    {"api_key_id": "key_1", "api_id": "x\n"},
    {"api_key_id": "key_1", "api_id": "x", "track": 0},
    {"api_key_id": "key_1", "api_id": "x", "track": 1_000_001},
    {"api_key_id": "key_1", "api_id": "x", "track": True},
    {"api_key_id": "key_1", "api_id": "x", "track": 2.0},
    {"api_key_id": "key_1", "api_id": "x", "track": "3"},
    {"api_key_id": "key_1", "api_id": "x", "extra": 1},
    {"subscription_id": SUB.replace("-", ""), "api_id": "x"},
    {"subscription_id": "{" + SUB[:34] + "}", "api_id": "x"},
    {"subscription_id": SUB[:8] + SUB[9:] + "-", "api_id": "x"},
    {"subscription_id": "not-a-uuid-not-a-uuid-not-a-uuid-123", "api_id": "x"},
    [],
    "x",
    None,
]


def _model(body: Any) -> CheckRequest | None:
    try:
        return CheckRequest.model_validate_json(orjson.dumps(body))
    except ValidationError:
        return None


@pytest.mark.parametrize("body", BODIES)
def test_the_lean_check_parse_accepts_only_what_the_model_accepts_with_the_same_values(body: Any) -> None:
    lean, model = _lean_check(body), _model(body)
    if lean is not None:
        assert model is not None
        assert lean.model_dump() == model.model_dump()


def test_the_lean_check_parse_takes_the_plain_bodies() -> None:
    assert all(_lean_check(body) is not None for body in BODIES[:7])


ANSWERS = [
    CheckAnswer(allowed=True, reason="ok", degraded=True),
    CheckAnswer(allowed=False, reason="unavailable", degraded=True),
    CheckAnswer(allowed=False, reason="no_subscription"),
    CheckAnswer(allowed=False, reason="not_active", subscription_id=SUB),
    CheckAnswer(
        allowed=True,
        reason="ok",
        subscription_id=SUB,
        remaining=4999,
        limit=5000,
        used=1,
        reset_at=PERIOD_END,
        overage=False,
        period_start=PERIOD_START,
        period_end=PERIOD_END,
    ),
    CheckAnswer(
        allowed=True,
        reason="ok",
        subscription_id=SUB,
        used=12_000_000_000,
        reset_at=PERIOD_END,
        overage=True,
        period_start=PERIOD_START,
        period_end=PERIOD_END,
    ),
    CheckAnswer(
        allowed=False,
        reason="rate_limited",
        subscription_id=SUB,
        remaining=0,
        limit=60,
        used=3,
        reset_at=PERIOD_START + timedelta(seconds=61, microseconds=5),
        period_start=PERIOD_START,
        period_end=PERIOD_END,
    ),
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_a_check_answer_serializes_byte_for_byte_as_the_schema(answer: CheckAnswer) -> None:
    expected = CheckResult.model_validate(dataclasses.asdict(answer)).model_dump_json().encode()
    assert answer.json() == expected


def test_check_answer_has_the_schemas_fields_in_its_order() -> None:
    assert [f.name for f in dataclasses.fields(CheckAnswer)] == list(CheckResult.model_fields)


pytestmark = pytest.mark.usefixtures("business_time")


@pytest.fixture(scope="module")
async def gateway(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # This process's copy of each snapshot on, as deployed (the other tests turn it off).
    configured = gateway_settings(
        settings, entitlements_redis_timeout_seconds=10, entitlements_local_snapshot_seconds=1
    )
    async with running(configured) as pair:
        yield pair


async def test_the_check_answers_the_schemas_json_over_http(
    gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    subscription = await entitled(engine, call_limit=10)
    response = await gateway[1].post(
        "/api/v1/entitlements/check", json=check_body(subscription, track=2), headers=GATEWAY
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == CheckResult.model_validate_json(response.content).model_dump_json().encode()
    assert (response.json()["used"], response.json()["remaining"]) == (2, 8)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"track": 0}, "track"),
        ({"api_id": "a b"}, "api_id"),
        ({"subscription_id": "nope"}, "subscription_id"),
    ],
)
async def test_a_bad_check_body_is_422_naming_the_field(
    gateway: tuple[FastAPI, httpx.AsyncClient], fields: dict[str, object], field: str
) -> None:
    body = {"api_key_id": "key_1", "api_id": "x", **fields}
    if "subscription_id" in fields:
        del body["api_key_id"]
    response = await gateway[1].post("/api/v1/entitlements/check", json=body, headers=GATEWAY)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert [d["field"] for d in response.json()["details"]] == [field]


async def test_a_check_body_that_is_not_json_is_422(gateway: tuple[FastAPI, httpx.AsyncClient]) -> None:
    response = await gateway[1].post(
        "/api/v1/entitlements/check",
        content=b"{nope",
        headers={**GATEWAY, "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


async def _command_calls(redis: Any) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = await redis.info("commandstats")
    return {name: value["calls"] for name, value in stats.items()}


async def test_a_warm_check_costs_one_redis_command_and_no_database_read(
    gateway: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    app, http = gateway
    subscription = await entitled(engine, call_limit=1000)
    body = check_body(subscription, track=1)
    assert (await http.post("/api/v1/entitlements/check", json=body, headers=GATEWAY)).status_code == 200
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(api_state(app).resources.engine.sync_engine, "before_cursor_execute", seen)
    redis = api_state(app).resources.entitlements_redis
    try:
        before = await _command_calls(redis)
        for _ in range(5):
            response = await http.post("/api/v1/entitlements/check", json=body, headers=GATEWAY)
            assert response.json()["allowed"] is True
        after = await _command_calls(redis)
    finally:
        event.remove(api_state(app).resources.engine.sync_engine, "before_cursor_execute", seen)
    moved = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    # The five checks' script calls (with the GET and INCRBY each runs inside Redis: Redis counts
    # those too), and the INFO that read the counts before them. No snapshot read, no other call.
    assert moved == {"cmdstat_evalsha": 5, "cmdstat_get": 5, "cmdstat_incrby": 5, "cmdstat_info": 1}
    assert statements == []
    assert uuid.UUID(response.json()["subscription_id"]) == subscription.id
