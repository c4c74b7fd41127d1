"""Faults through the HTTP API: a frozen PostgreSQL or Redis (SIGSTOP of the session's own servers).

Every freeze is undone in a `finally` (tests/support/freeze.py), and each test checks that nothing was
lost once the server is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name
from arq.worker import Worker
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.config import Settings
from app.dependencies import api_state
from app.main import create_app
from app.models import StripeEvent
from app.resources import Resources
from app.webhooks.ingest import event_job_id
from app.webhooks.jobs import CRON_JOBS
from tests.support.asgi import api_client, get_scope
from tests.support.auth import bearer
from tests.support.billing_data import customer_created
from tests.support.factories import TokenFactory
from tests.support.freeze import frozen, postgres_pids, redis_pids
from tests.support.settings import make_settings
from tests.support.worker import send

log = logging.getLogger(__name__)


def _checked_out(app: FastAPI) -> int:
    """Connections the API's engine has lent out right now."""
    pool = api_state(app).resources.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


# "About 2 s" (connect + command timeout with the default settings), with room for a loaded machine.
DB_503_WITHIN = 2.6
READY_WITHIN = 1.3
WEBHOOK_WITHIN = 1.0
SWEPT_WITHIN = 15.0
GIVE_UP_AFTER = 10.0  # a test fails rather than hang on a server that never answers


@pytest.fixture
async def fault_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """An app of its own on the session's servers, with the default timeouts of production."""
    own = make_settings(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        stripe_api_base=settings.stripe_api_base,
        db_pool_size=10,
    )
    application = create_app(own)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(fault_app: FastAPI, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(fault_app) as client:
        yield client


async def _timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def _stored(engine: AsyncEngine, event_id: str) -> StripeEvent | None:
    async with engine.connect() as connection:
        return (await connection.execute(select(StripeEvent).where(StripeEvent.id == event_id))).first()  # type: ignore[return-value]


async def test_frozen_database_answers_503_fast_everywhere_and_loses_nothing(
    http: httpx.AsyncClient, fault_app: FastAPI, workdir: Path, engine: AsyncEngine
) -> None:
    tokens = TokenFactory()
    consumer = bearer(tokens.make(role="consumer"))
    creator = {**bearer(tokens.make(role="creator")), "Idempotency-Key": "plan-1"}
    # Warm pools: the freeze catches connections in use as well as new ones.
    assert (await http.get("/api/v1/subscriptions", headers=consumer)).status_code == 200
    assert (await send(http, customer_created())).status_code == 200
    payload = customer_created()
    plan = {"name": "Basic", "type": "free"}

    with frozen(postgres_pids(workdir)):
        results = await asyncio.wait_for(
            asyncio.gather(
                _timed(http.get("/api/v1/subscriptions", headers=consumer)),
                _timed(http.get(f"/api/v1/consumers/{uuid.uuid4()}", headers=consumer)),
                _timed(http.post("/api/v1/consumers/register", headers=consumer)),
                _timed(http.post("/api/v1/apis/weather/plans", json=plan, headers=creator)),
                _timed(send(http, payload)),
            ),
            GIVE_UP_AFTER,
        )
        ready, ready_seconds = await asyncio.wait_for(_timed(http.get("/ready")), GIVE_UP_AFTER)
        # The ingest pool and the engine both gave their connections back while still frozen.
        assert _checked_out(fault_app) == 0

    timings = [round(seconds, 2) for _, seconds in results]
    log.info(f"time to 503 with the database frozen: {timings} s; /ready {ready_seconds:.2f} s")
    for response, seconds in results:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "service_unavailable"
        assert set(response.json()) >= {"error", "code", "request_id"}
        assert seconds < DB_503_WITHIN
    assert ready.status_code == 503
    assert ready.json()["error"] == "Not ready: database unreachable"
    assert ready_seconds < READY_WITHIN

    # Back again: Stripe's retry of the refused event is stored, the routes answer, the key is free.
    assert (await send(http, payload)).status_code == 200
    assert await _stored(engine, payload["id"]) is not None
    assert (await http.get("/api/v1/subscriptions", headers=consumer)).status_code == 200
    assert (await http.post("/api/v1/apis/weather/plans", json=plan, headers=creator)).status_code == 201
    assert (await http.get("/ready")).status_code == 200


async def _abandoned_request(app: FastAPI, path: str, token: str) -> None:
    """A request whose client hangs up at once; like uvicorn, the app is told, not cancelled."""
    headers = [(b"host", b"billing.test"), (b"authorization", f"Bearer {token}".encode())]
    scope = get_scope(path, headers=headers)
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def test_request_abandoned_by_its_client_holds_no_connection(
    http: httpx.AsyncClient, fault_app: FastAPI, workdir: Path
) -> None:
    token = TokenFactory().make(role="consumer")
    assert (await http.get("/api/v1/subscriptions", headers=bearer(token))).is_success
    with frozen(postgres_pids(workdir)):
        abandoned = [
            asyncio.create_task(_abandoned_request(fault_app, "/api/v1/subscriptions", token))
            for _ in range(3)
        ]
        await asyncio.sleep(DB_503_WITHIN)
        finished = [task.done() for task in abandoned]
        checked_out = _checked_out(fault_app)
    await asyncio.gather(*abandoned, return_exceptions=True)
    assert finished == [True] * 3
    assert checked_out == 0
    assert (await http.get("/api/v1/subscriptions", headers=bearer(token))).is_success


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    yield redis
    await redis.aclose()


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # inside arq
async def test_frozen_redis_webhook_answered_within_a_second_and_swept_after_recovery(
    http: httpx.AsyncClient, engine: AsyncEngine, arq_redis: ArqRedis, settings: Settings
) -> None:
    assert (await send(http, customer_created())).status_code == 200
    payloads = [customer_created() for _ in range(3)]
    burst = [customer_created() for _ in range(40)]

    with frozen(redis_pids(settings.redis_url)):
        results = await asyncio.wait_for(
            asyncio.gather(*(_timed(send(http, p)) for p in payloads)), GIVE_UP_AFTER
        )
        # A burst while Redis stays frozen: no batch waits on Redis behind another.
        results += await asyncio.wait_for(
            asyncio.gather(*(_timed(send(http, p)) for p in burst)), GIVE_UP_AFTER
        )
        ready, ready_seconds = await asyncio.wait_for(_timed(http.get("/ready")), GIVE_UP_AFTER)

    for response, seconds in results:
        assert response.status_code == 200, response.text
        assert seconds < WEBHOOK_WITHIN
    assert ready.status_code == 503
    assert ready_seconds < READY_WITHIN
    sent = [*payloads, *burst]
    for payload in sent:
        stored = await _stored(engine, payload["id"])
        assert stored is not None
        assert stored.status == "pending"

    # Redis came back without those jobs (say it restarted): the worker's own sweeper, on its
    # deployed schedule, hands the stored events to the queue again.
    job_keys = [f"arq:job:{event_job_id(p['id'])}" for p in sent]
    await arq_redis.delete(*job_keys)
    await arq_redis.zrem(default_queue_name, *(event_job_id(p["id"]) for p in sent))
    resumed_at = time.monotonic()
    sweeper = [job for job in CRON_JOBS if job.name == "cron:enqueue_pending_stripe_events"]
    resources = Resources.open(settings, jobs=True)
    worker = Worker(
        functions=[],
        cron_jobs=sweeper,
        redis_pool=arq_redis,
        queue_name=f"arq:faults:{uuid.uuid4().hex[:8]}",  # the sweep itself runs here, not the events
        ctx={"resources": resources},
        handle_signals=False,
        poll_delay=0.2,
    )
    running = asyncio.create_task(worker.async_run())
    try:
        while time.monotonic() - resumed_at < SWEPT_WITHIN:
            if await arq_redis.exists(*job_keys) == len(job_keys):
                break
            await asyncio.sleep(0.25)
        swept_after = time.monotonic() - resumed_at
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await resources.close()
    log.info(f"stored events enqueued {swept_after:.1f} s after Redis returned")
    assert await arq_redis.exists(*job_keys) == len(job_keys)
