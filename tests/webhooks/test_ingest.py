"""POST /webhooks/stripe: verify, store, enqueue, answer at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dependencies import api_state
from app.dev.processes import free_port
from app.main import create_app
from app.models import StripeEvent
from app.resources import Resources
from app.webhooks.ingest import event_job_id
from app.webhooks.jobs import enqueue_pending_stripe_events
from app.webhooks.router import StripeWebhookRoute
from tests.support.asgi import lean_and_declared, matched_by
from tests.support.factories import sign_webhook
from tests.support.settings import make_settings

URL = "/webhooks/stripe"


def event(event_type: str = "customer.created", **obj: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {"object": {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer", **obj}},
    }


async def post_signed(
    client: httpx.AsyncClient, payload: dict[str, Any] | bytes, **kw: Any
) -> httpx.Response:
    body, header = sign_webhook(payload, **kw)
    return await client.post(URL, content=body, headers={"Stripe-Signature": header})


async def stored_events(engine: AsyncEngine) -> list[StripeEvent]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(StripeEvent))
        return list(rows.all())  # type: ignore[arg-type]


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    yield redis
    await redis.aclose()


async def test_signed_event_is_stored_enqueued_and_acknowledged(
    client: httpx.AsyncClient, engine: AsyncEngine, arq_redis: ArqRedis
) -> None:
    payload = event()
    response = await post_signed(client, payload)
    assert response.status_code == 200
    assert response.json() == {"received": True}
    [row] = await stored_events(engine)
    assert (row.id, row.type, row.status, row.stripe_created) == (
        payload["id"],
        "customer.created",
        "pending",
        payload["created"],
    )
    assert row.payload == payload
    assert await arq_redis.exists(f"arq:job:{event_job_id(payload['id'])}")


async def test_duplicate_deliveries_store_the_event_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    payload = event()
    for _ in range(10):
        assert (await post_signed(client, payload)).status_code == 200
    assert len(await stored_events(engine)) == 1


async def test_event_signed_with_a_rotated_out_secret_is_accepted_while_listed(
    settings: Settings, engine: AsyncEngine
) -> None:
    rotated = make_settings(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        stripe_webhook_secret="whsec_new, whsec_old",
    )
    app = create_app(rotated)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as http:
            old = await post_signed(http, event(), secret="whsec_old")
            new = await post_signed(http, event(), secret="whsec_new")
            unknown = await post_signed(http, event(), secret="whsec_gone")
    assert (old.status_code, new.status_code, unknown.status_code) == (200, 200, 400)
    assert len(await stored_events(engine)) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Stripe-Signature": "t=1,v1=deadbeef"},
        {"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"},
    ],
)
async def test_missing_or_bad_signature_is_400_and_nothing_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]
) -> None:
    response = await client.post(URL, content=orjson.dumps(event()), headers=headers)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_signature"
    assert set(body) == {"error", "code", "request_id"}
    assert await stored_events(engine) == []


async def test_stale_timestamp_is_400_and_nothing_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await post_signed(client, event(), at=int(time.time()) - 301)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_signature"
    assert await stored_events(engine) == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"type": "customer.created", "created": 1, "data": {"object": {}}}'],
)
async def test_signed_but_malformed_body_is_400(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes
) -> None:
    response = await post_signed(client, body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_payload"
    assert await stored_events(engine) == []


async def test_redis_down_still_stores_and_answers_200_and_the_sweeper_enqueues_later(
    settings: Settings, engine: AsyncEngine, arq_redis: ArqRedis
) -> None:
    dead_redis = make_settings(
        database_url=settings.database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    app = create_app(dead_redis)
    payload = event()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as http:
            response = await post_signed(http, payload)
    assert response.status_code == 200
    [row] = await stored_events(engine)
    assert row.status == "pending"
    job_key = f"arq:job:{event_job_id(payload['id'])}"
    assert not await arq_redis.exists(job_key)

    resources = Resources.open(settings, jobs=True)
    try:
        ctx = {"resources": resources, "redis": arq_redis}
        assert await enqueue_pending_stripe_events(ctx, min_age_seconds=0) == 1
        assert await enqueue_pending_stripe_events(ctx, min_age_seconds=0) == 0
    finally:
        await resources.close()
    assert await arq_redis.exists(job_key)


async def test_webhook_needs_no_bearer_token(client: httpx.AsyncClient) -> None:
    response = await post_signed(client, event())
    assert response.status_code == 200


async def test_database_down_is_503_so_stripe_sends_again(settings: Settings) -> None:
    dead_database = make_settings(
        database_url=f"postgresql://billing@127.0.0.1:{free_port()}/billing", redis_url=settings.redis_url
    )
    app = create_app(dead_database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as http:
            response = await post_signed(http, event())
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"


async def test_concurrent_deliveries_of_one_event_store_it_once(
    client: httpx.AsyncClient, engine: AsyncEngine, arq_redis: ArqRedis
) -> None:
    payload, others = event(), [event() for _ in range(5)]
    responses = await asyncio.gather(*(post_signed(client, p) for p in [payload] * 10 + others))
    assert {r.status_code for r in responses} == {200}
    assert sorted(e.id for e in await stored_events(engine)) == sorted(p["id"] for p in [payload, *others])
    assert await arq_redis.exists(*(f"arq:job:{event_job_id(p['id'])}" for p in [payload, *others])) == 6


@pytest.mark.parametrize("client_kind", ["arq", "pipelined"])
async def test_one_enqueue_call_adds_each_new_job_once_and_skips_jobs_or_results_that_exist(
    arq_redis: ArqRedis, redis_url: str, client_kind: str
) -> None:
    """Through arq's client (the worker's sweeper) and the pipelined one (webhook ingest), on a
    Redis that has not seen the script yet (the first call loads it and sends again)."""
    from arq.constants import default_queue_name, result_key_prefix
    from arq.jobs import Job, JobStatus

    from app.db.packed_redis import PipelinedRedis
    from app.db.redis import enqueue_unique_many
    from app.webhooks.ingest import PROCESS_JOB

    ids = [f"evt_{uuid.uuid4().hex}" for _ in range(4)]
    jobs = [(event_job_id(i), (i,)) for i in ids]
    await arq_redis.set(result_key_prefix + jobs[3][0], b"done before")  # a job that already ran
    await arq_redis.script_flush()
    client: ArqRedis | PipelinedRedis = (
        arq_redis if client_kind == "arq" else PipelinedRedis(redis_url, timeout=2.0)
    )
    try:
        assert await enqueue_unique_many(client, PROCESS_JOB, jobs[:2]) == [True, True]
        assert await enqueue_unique_many(client, PROCESS_JOB, jobs) == [False, False, True, False]
    finally:
        if isinstance(client, PipelinedRedis):
            client.close()

    # The queue is shared with other tests: only these jobs' places in it are asked.
    places = [await arq_redis.zscore(default_queue_name, job_id) for job_id, _ in jobs]
    assert [place is not None for place in places] == [True, True, True, False]
    for job_id, args in jobs[:3]:
        job = Job(job_id, arq_redis)
        assert await job.status() == JobStatus.queued
        info = await job.info()
        assert info is not None
        assert (info.function, info.args) == (PROCESS_JOB, args)


async def test_the_lean_webhook_route_answers_byte_for_byte_what_the_declared_route_answers(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The route matched ahead of the declared ones (no routing walk, no request object) and
    the FastAPI route it stands in for: the same status, headers and bytes for a new event, a
    duplicate, bad signatures, bad bodies, a wrong method and while not accepting webhooks."""
    lean = app.router.routes[1]
    assert isinstance(lean, StripeWebhookRoute)
    new, duplicate = event(), event()
    await post_signed(client, duplicate)
    stamp = int(time.time())
    requests: list[tuple[str, bytes, str]] = [  # method, body, Stripe-Signature ("": none)
        ("POST", *sign_webhook(new)),
        ("POST", *sign_webhook(duplicate)),
        ("POST", orjson.dumps(event()), ""),
        ("POST", orjson.dumps(event()), f"t={stamp},v1={'0' * 64}"),
        ("POST", *sign_webhook(b"{not json")),
        ("POST", *sign_webhook(b"[1, 2]")),
        ("PUT", *sign_webhook(event())),
    ]

    async def answers() -> list[tuple[int, list[tuple[str, str]], bytes]]:
        seen = []
        for method, body, signature in requests:
            headers = {"x-request-id": "compare", **({"Stripe-Signature": signature} if signature else {})}
            response = await client.request(method, URL, content=body, headers=headers)
            seen.append((response.status_code, response.headers.multi_items(), response.content))
        state = api_state(app)
        service, state.webhooks = state.webhooks, None
        try:
            response = await client.post(URL, content=requests[0][1], headers={"x-request-id": "compare"})
        finally:
            state.webhooks = service
        seen.append((response.status_code, response.headers.multi_items(), response.content))
        return seen

    with_lean, declared = await lean_and_declared(app, lean, answers)

    assert with_lean == declared
    assert [status for status, _, _ in with_lean] == [200, 200, 400, 400, 400, 400, 405, 503]
    assert with_lean[0][2] == b'{"received":true}'
    assert sorted(e.id for e in await stored_events(engine)) == sorted([new["id"], duplicate["id"]])


def test_the_lean_webhook_route_matches_only_a_post_to_the_webhook_path(app: FastAPI) -> None:
    """Another method goes on to the declared route (its 405), another path to the other routes."""
    lean = app.router.routes[1]
    assert isinstance(lean, StripeWebhookRoute)
    paths = (URL, URL + "/", URL + "x", "/api/v1" + URL)
    assert matched_by(lean, ("POST", "GET", "PUT"), paths) == [("POST", URL)]
