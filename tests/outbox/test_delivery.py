from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import jwt
import pytest
import respx
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from arq.worker import Worker
from redis.asyncio import ConnectionPool
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.integrations.apikey import ApiKeyClient
from app.models import Api, Consumer, OutboxMessage, PricingPlan, PricingPlanVersion, Subscription
from app.outbox.delivery import SWEEP_GRACE, OutboxDelivery
from app.outbox.jobs import deliver_outbox_message, sweep_outbox
from app.outbox.service import Outbox, delivery_job_id
from app.resources import Resources
from app.worker.settings import WorkerSettings
from tests.support.factories import JWT_SECRET
from tests.support.settings import make_settings

KEYS_URL = "http://apikeys.test/api/v1/keys"


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    client = ArqRedis(connection_pool=ConnectionPool.from_url(settings.redis_url))
    yield client
    await client.aclose()


async def _ctx(settings: Settings, redis: ArqRedis | None) -> dict[str, Any]:
    return {"resources": Resources.open(settings, jobs=True), "redis": redis}


@pytest.fixture
async def ctx(settings: Settings, redis: ArqRedis) -> AsyncIterator[dict[str, Any]]:
    context = await _ctx(settings, redis)
    yield context
    await context["resources"].close()


def _sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def _subscription(
    engine: AsyncEngine, *, status: str = "active", api_key_id: str | None = None
) -> Subscription:
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    api_id = f"api-{uuid.uuid4().hex[:8]}"
    async with _sessions(engine).begin() as session:
        consumer = Consumer(user_id=user_id, email=f"{user_id}@example.com", stripe_customer_id=None)
        plan = PricingPlan(api_id=api_id, name="Free", type="free")
        session.add_all([consumer, Api(api_id=api_id, creator_id="creator-1")])
        await session.flush()
        session.add(plan)
        await session.flush()
        session.add(PricingPlanVersion(plan_id=plan.id, version=1, currency="usd"))
        await session.flush()
        subscription = Subscription(
            consumer_id=consumer.id,
            api_id=api_id,
            pricing_plan_id=plan.id,
            plan_version=1,
            status=status,
            api_key_id=api_key_id,
        )
        session.add(subscription)
    return subscription


async def _write_intent(engine: AsyncEngine, subscription: Subscription, kind: str) -> uuid.UUID | None:
    """Write an intent through the Outbox (without Redis): the new message's id, None if it wrote none."""
    async with _sessions(engine).begin() as session:
        before = set((await session.scalars(select(OutboxMessage.id))).all())
        outbox = Outbox(session, None)
        await getattr(outbox, kind)(subscription)
        after = set((await session.scalars(select(OutboxMessage.id))).all())
    new = after - before
    return new.pop() if new else None


async def _intend(engine: AsyncEngine, subscription: Subscription, kind: str) -> uuid.UUID:
    """Write an intent that the Outbox must take: the new message's id."""
    message_id = await _write_intent(engine, subscription, kind)
    assert message_id is not None
    return message_id


async def _message(engine: AsyncEngine, message_id: uuid.UUID) -> OutboxMessage:
    async with _sessions(engine)() as session:
        message = await session.get(OutboxMessage, message_id)
        assert message is not None
        return message


async def _reload(engine: AsyncEngine, subscription: Subscription) -> Subscription:
    async with _sessions(engine)() as session:
        row = await session.get(Subscription, subscription.id)
        assert row is not None
        return row


async def _make_due(engine: AsyncEngine, message_id: uuid.UUID) -> None:
    """Jump past the message's backoff, as if the time had passed."""
    async with engine.begin() as connection:
        await connection.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _created(key_id: str) -> httpx.Response:
    return httpx.Response(
        201, json={"api_key": "mk_secret_value", "key_info": {"id": key_id, "key_prefix": "mk_secr"}}
    )


@respx.mock
async def test_delivered_create_stores_the_key_id_on_the_subscription(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(return_value=_created("key_1"))

    assert await deliver_outbox_message(ctx, str(message_id)) == "done"

    assert (await _reload(engine, subscription)).api_key_id == "key_1"
    message = await _message(engine, message_id)
    assert (message.status, message.attempts, message.last_error) == ("done", 1, None)
    request = route.calls.last.request
    body = httpx.Response(200, content=request.content).json()
    assert body == {"name": f"{subscription.api_id} subscription", "subscription_id": str(subscription.id)}
    assert request.headers["Idempotency-Key"] == f"create_api_key:{subscription.id}"


@respx.mock
async def test_service_token_is_a_short_admin_jwt_for_the_consumer(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(return_value=_created("key_1"))

    await deliver_outbox_message(ctx, str(message_id))

    token = route.calls.last.request.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    async with _sessions(engine)() as session:
        user_id = await session.scalar(
            select(Consumer.user_id).where(Consumer.id == subscription.consumer_id)
        )
    assert claims["sub"] == user_id
    assert claims["custom:user_type"] == "admin"
    assert 0 < claims["exp"] - datetime.now(UTC).timestamp() <= 120


@respx.mock
async def test_failed_create_is_retried_with_growing_backoff_until_it_succeeds(
    engine: AsyncEngine, ctx: dict[str, Any], redis: ArqRedis, settings: Settings
) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(
        side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), _created("key_2")]
    )
    base = settings.outbox_retry_base_seconds

    started = datetime.now(UTC)
    assert await deliver_outbox_message(ctx, str(message_id)) == "retry_scheduled"
    first = await _message(engine, message_id)
    assert first.status == "pending"
    assert first.attempts == 1
    assert first.last_error is not None
    assert "503" in first.last_error
    assert timedelta(seconds=base / 2) <= first.next_attempt_at - started <= timedelta(seconds=base + 1)
    # The retry is enqueued, deferred to the row's next attempt.
    retry_job = Job(delivery_job_id(message_id, first.next_attempt_at), redis)
    assert await retry_job.status() == JobStatus.deferred

    assert await deliver_outbox_message(ctx, str(message_id)) == "not_due"
    assert route.call_count == 1

    await _make_due(engine, message_id)
    started = datetime.now(UTC)
    assert await deliver_outbox_message(ctx, str(message_id)) == "retry_scheduled"
    second = await _message(engine, message_id)
    assert second.attempts == 2
    assert second.last_error is not None
    assert second.last_error.startswith("[ambiguous]")
    assert timedelta(seconds=base) <= second.next_attempt_at - started <= timedelta(seconds=2 * base + 1)

    await _make_due(engine, message_id)
    assert await deliver_outbox_message(ctx, str(message_id)) == "done"
    assert (await _reload(engine, subscription)).api_key_id == "key_2"
    assert (await _message(engine, message_id)).attempts == 3


@respx.mock
async def test_delivery_failing_every_attempt_ends_failed_with_the_error(
    engine: AsyncEngine, settings: Settings
) -> None:
    ctx = await _ctx(make_settings(database_url=settings.database_url, outbox_max_attempts=3), None)
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(return_value=httpx.Response(500, text="database on fire"))
    try:
        outcomes = []
        for _ in range(3):
            outcomes.append(await deliver_outbox_message(ctx, str(message_id)))
            await _make_due(engine, message_id)
        assert outcomes == ["retry_scheduled", "retry_scheduled", "failed"]
        assert await deliver_outbox_message(ctx, str(message_id)) == "finished"
    finally:
        await ctx["resources"].close()
    message = await _message(engine, message_id)
    assert message.status == "failed"
    assert message.attempts == 3
    assert message.last_error is not None
    assert "500" in message.last_error
    assert "database on fire" in message.last_error
    assert route.call_count == 3
    assert (await _reload(engine, subscription)).api_key_id is None


@respx.mock
async def test_a_rejected_create_fails_at_once(engine: AsyncEngine, ctx: dict[str, Any]) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    respx.post(KEYS_URL).mock(return_value=httpx.Response(422, json={"detail": "bad name"}))

    assert await deliver_outbox_message(ctx, str(message_id)) == "failed"
    message = await _message(engine, message_id)
    assert message.status == "failed"
    assert message.last_error is not None
    assert "422" in message.last_error


@respx.mock
async def test_concurrent_duplicate_deliveries_create_one_key(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")

    async def slow_create(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return _created("key_once")

    route = respx.post(KEYS_URL).mock(side_effect=slow_create)
    outcomes = await asyncio.gather(*(deliver_outbox_message(ctx, str(message_id)) for _ in range(5)))
    assert sorted(outcomes) == ["done", "locked", "locked", "locked", "locked"]
    assert await deliver_outbox_message(ctx, str(message_id)) == "finished"
    assert route.call_count == 1
    assert (await _reload(engine, subscription)).api_key_id == "key_once"


async def test_asking_twice_for_a_key_writes_one_intent(engine: AsyncEngine) -> None:
    subscription = await _subscription(engine)
    await _intend(engine, subscription, "create_api_key")
    assert await _write_intent(engine, subscription, "create_api_key") is None


@respx.mock
async def test_create_is_a_no_op_when_the_subscription_already_has_a_key(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine, api_key_id="key_existing")
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(return_value=_created("key_new"))

    assert await deliver_outbox_message(ctx, str(message_id)) == "done"
    assert route.call_count == 0
    assert (await _reload(engine, subscription)).api_key_id == "key_existing"


@respx.mock
async def test_no_key_is_issued_to_a_subscription_that_ended_first(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine, status="cancelled")
    message_id = await _intend(engine, subscription, "create_api_key")
    route = respx.post(KEYS_URL).mock(return_value=_created("key_new"))

    assert await deliver_outbox_message(ctx, str(message_id)) == "done"
    assert route.call_count == 0
    assert (await _message(engine, message_id)).last_error == (
        "skipped: the subscription ended before its key was issued"
    )


@respx.mock
async def test_revoke_deletes_the_key_at_the_service(engine: AsyncEngine, ctx: dict[str, Any]) -> None:
    subscription = await _subscription(engine, status="cancelled", api_key_id="key_9")
    message_id = await _intend(engine, subscription, "revoke_api_key")
    route = respx.delete(f"{KEYS_URL}/key_9").mock(return_value=httpx.Response(204))

    assert await deliver_outbox_message(ctx, str(message_id)) == "done"
    assert route.call_count == 1
    assert route.calls.last.request.headers["Authorization"].startswith("Bearer ")


@respx.mock
async def test_revoke_answered_404_counts_as_done(engine: AsyncEngine, ctx: dict[str, Any]) -> None:
    subscription = await _subscription(engine, status="cancelled", api_key_id="key_gone")
    message_id = await _intend(engine, subscription, "revoke_api_key")
    respx.delete(f"{KEYS_URL}/key_gone").mock(return_value=httpx.Response(404))

    assert await deliver_outbox_message(ctx, str(message_id)) == "done"
    message = await _message(engine, message_id)
    assert message.status == "done"
    assert message.last_error == "key unknown to the API key service (404)"


@respx.mock
async def test_revoke_waits_for_its_pending_create_then_revokes_the_new_key(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine)
    create_id = await _intend(engine, subscription, "create_api_key")
    revoke_id = await _intend(engine, subscription, "revoke_api_key")
    create = respx.post(KEYS_URL).mock(return_value=_created("key_late"))
    delete = respx.delete(f"{KEYS_URL}/key_late").mock(return_value=httpx.Response(204))

    assert await deliver_outbox_message(ctx, str(revoke_id)) == "waiting"
    assert delete.call_count == 0
    waiting = await _message(engine, revoke_id)
    assert (waiting.status, waiting.attempts) == ("pending", 0)

    assert await deliver_outbox_message(ctx, str(create_id)) == "done"
    # The create's completion made the waiting revoke due at once.
    assert await deliver_outbox_message(ctx, str(revoke_id)) == "done"
    assert (create.call_count, delete.call_count) == (1, 1)


@respx.mock
async def test_sweeper_enqueues_a_pending_message_whose_job_was_lost(
    engine: AsyncEngine, ctx: dict[str, Any], redis: ArqRedis
) -> None:
    lost = await _subscription(engine)
    fresh = await _subscription(engine)
    lost_id = await _intend(engine, lost, "create_api_key")
    fresh_id = await _intend(engine, fresh, "create_api_key")
    async with engine.begin() as connection:
        await connection.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == lost_id)
            .values(next_attempt_at=datetime.now(UTC) - SWEEP_GRACE - timedelta(seconds=5))
        )
    respx.post(KEYS_URL).mock(return_value=_created("key_swept"))

    assert await sweep_outbox(ctx) == 1
    queued = [job.args for job in await redis.queued_jobs()]
    assert (str(lost_id),) in queued
    assert (str(fresh_id),) not in queued
    assert await sweep_outbox(ctx) == 0  # not stale again right after being re-enqueued

    assert await deliver_outbox_message(ctx, str(lost_id)) == "done"
    assert (await _reload(engine, lost)).api_key_id == "key_swept"


@respx.mock
async def test_suspend_revokes_and_restore_issues_a_new_key_cycle_after_cycle(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine, status="past_due", api_key_id="key_a")
    respx.delete(f"{KEYS_URL}/key_a").mock(return_value=httpx.Response(204))
    respx.delete(f"{KEYS_URL}/key_b").mock(return_value=httpx.Response(204))
    respx.post(KEYS_URL).mock(side_effect=[_created("key_b"), _created("key_c")])

    for old_key, new_key in (("key_a", "key_b"), ("key_b", "key_c")):
        suspend_id = await _intend(engine, subscription, "suspend_api_key")
        assert await _write_intent(engine, subscription, "suspend_api_key") is None  # already asked
        assert await deliver_outbox_message(ctx, str(suspend_id)) == "done"
        suspended = await _reload(engine, subscription)
        assert (suspended.api_key_id, suspended.api_key_suspended) == (old_key, True)

        restore_id = await _intend(engine, subscription, "restore_api_key")
        assert await _write_intent(engine, subscription, "restore_api_key") is None
        assert await deliver_outbox_message(ctx, str(restore_id)) == "done"
        restored = await _reload(engine, subscription)
        assert (restored.api_key_id, restored.api_key_suspended) == (new_key, False)

    async with _sessions(engine)() as session:
        count = await session.scalar(
            select(func.count()).where(OutboxMessage.subscription_id == subscription.id)
        )
    assert count == 4


async def test_restore_without_a_suspension_writes_nothing(engine: AsyncEngine) -> None:
    subscription = await _subscription(engine, api_key_id="key_a")
    assert await _write_intent(engine, subscription, "restore_api_key") is None


@respx.mock
async def test_revoke_of_a_suspended_key_calls_nothing(engine: AsyncEngine, ctx: dict[str, Any]) -> None:
    subscription = await _subscription(engine, status="past_due", api_key_id="key_a")
    route = respx.delete(f"{KEYS_URL}/key_a").mock(return_value=httpx.Response(204))
    suspend_id = await _intend(engine, subscription, "suspend_api_key")
    revoke_id = await _intend(engine, subscription, "revoke_api_key")

    assert await deliver_outbox_message(ctx, str(suspend_id)) == "done"
    assert await deliver_outbox_message(ctx, str(revoke_id)) == "done"
    assert route.call_count == 1
    assert (await _message(engine, revoke_id)).last_error == ("key already revoked by its suspension")


@respx.mock
async def test_a_key_issued_in_an_attempt_that_cannot_be_stored_is_deleted_again(
    engine: AsyncEngine, ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    respx.post(KEYS_URL).mock(return_value=_created("key_orphan"))
    delete = respx.delete(f"{KEYS_URL}/key_orphan").mock(return_value=httpx.Response(204))

    async def database_gone(*args: object) -> None:
        raise ConnectionError("database went away")

    # Fails after the service issued the key and before our transaction commits.
    monkeypatch.setattr(OutboxDelivery, "_hurry_next", database_gone)
    with pytest.raises(ConnectionError):
        await deliver_outbox_message(ctx, str(message_id))

    assert delete.call_count == 1
    message = await _message(engine, message_id)
    assert (message.status, message.attempts) == ("pending", 0)
    assert (await _reload(engine, subscription)).api_key_id is None


@respx.mock
async def test_an_arq_worker_delivers_the_intent_enqueued_after_commit(
    engine: AsyncEngine, settings: Settings, redis: ArqRedis
) -> None:
    await redis.flushdb()  # jobs other tests left behind
    subscription = await _subscription(engine)
    respx.post(KEYS_URL).mock(return_value=_created("key_worker"))
    async with unit_of_work(_sessions(engine)) as session:
        await Outbox(session, redis).create_api_key(subscription)
    resources = Resources.open(settings, jobs=True)
    worker = Worker(
        functions=WorkerSettings.functions,
        redis_pool=redis,
        burst=True,
        poll_delay=0.05,
        ctx={"resources": resources},
        handle_signals=False,
    )
    try:
        await worker.async_run()
    finally:
        await resources.close()
    assert worker.jobs_complete == 1
    assert (await _reload(engine, subscription)).api_key_id == "key_worker"


@respx.mock
async def test_revoke_after_a_create_that_failed_for_good_has_nothing_to_revoke(
    engine: AsyncEngine, ctx: dict[str, Any]
) -> None:
    subscription = await _subscription(engine)
    create_id = await _intend(engine, subscription, "create_api_key")
    revoke_id = await _intend(engine, subscription, "revoke_api_key")
    respx.post(KEYS_URL).mock(return_value=httpx.Response(400, json={"detail": "no"}))
    delete = respx.delete(url__startswith=KEYS_URL).mock(return_value=httpx.Response(204))

    assert await deliver_outbox_message(ctx, str(create_id)) == "failed"
    assert await deliver_outbox_message(ctx, str(revoke_id)) == "done"
    assert delete.call_count == 0
    assert (await _message(engine, revoke_id)).last_error == "no key to revoke"


class _CommitAnswerLost:
    """A sessionmaker whose transactions commit, then report a failure (the COMMIT's answer lost)."""

    def __init__(self, real: async_sessionmaker[AsyncSession]) -> None:
        self._real = real

    def __call__(self) -> AsyncSession:
        session = self._real()
        commit = session.commit

        async def commit_then_lose_the_answer() -> None:
            await commit()
            raise ConnectionError("connection lost while committing")

        session.commit = commit_then_lose_the_answer  # type: ignore[method-assign]
        return session


@respx.mock
async def test_a_key_whose_commit_applied_after_all_is_kept(engine: AsyncEngine, ctx: dict[str, Any]) -> None:
    subscription = await _subscription(engine)
    message_id = await _intend(engine, subscription, "create_api_key")
    respx.post(KEYS_URL).mock(return_value=_created("key_kept"))
    delete = respx.delete(f"{KEYS_URL}/key_kept").mock(return_value=httpx.Response(204))
    resources: Resources = ctx["resources"]
    delivery = OutboxDelivery(
        cast("Any", _CommitAnswerLost(resources.sessionmaker)),
        ApiKeyClient(resources.settings, resources.http),
        resources.settings,
        None,
    )

    with pytest.raises(ConnectionError):
        await delivery.deliver(message_id)

    assert delete.call_count == 0
    assert (await _reload(engine, subscription)).api_key_id == "key_kept"
