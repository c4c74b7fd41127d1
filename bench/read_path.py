"""GET /api/v1/subscriptions for a consumer with 20 subscriptions, against a hello endpoint of the
same app, same client, concurrency 8, on embedded PostgreSQL. Goals: >= 0.28x the hello
throughput, and a p99 no more than 3x its own median."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.consumers.service import consumer_id_for
from app.main import create_app
from app.models import Api, Consumer, PricingPlan, PricingPlanVersion, Subscription
from bench.harness import JWT_SECRET, client_for, embedded_stack, load

SUBSCRIPTIONS = 20
CONCURRENCY = 8
REQUESTS = 3000


async def seed(database_url: str, user_id: str) -> None:
    engine = create_async_engine(database_url)
    consumer_id = consumer_id_for(user_id)
    async with engine.begin() as connection:
        await connection.execute(
            insert(Consumer).values(id=consumer_id, user_id=user_id, stripe_customer_id="cus_b")
        )
        for n in range(SUBSCRIPTIONS):
            api_id, plan_id = f"bench-api-{n}", uuid.uuid4()
            await connection.execute(insert(Api).values(api_id=api_id, creator_id="bench-creator"))
            await connection.execute(
                insert(PricingPlan).values(
                    id=plan_id,
                    api_id=api_id,
                    name="Pro",
                    type="subscription",
                    features={"n": n},
                    current_version=1,
                )
            )
            await connection.execute(
                insert(PricingPlanVersion).values(
                    id=uuid.uuid4(), plan_id=plan_id, version=1, currency="usd", monthly_amount=2900
                )
            )
            await connection.execute(
                insert(Subscription).values(
                    id=uuid.uuid4(),
                    consumer_id=consumer_id,
                    api_id=api_id,
                    pricing_plan_id=plan_id,
                    plan_version=1,
                    status="active",
                    stripe_subscription_id=f"sub_bench_{n}",
                    api_key_id=f"key_{n}",
                    cancel_at_period_end=False,
                    api_key_suspended=False,
                )
            )
    await engine.dispose()


async def main() -> None:
    async with embedded_stack() as settings:
        user_id = "bench-consumer"
        await seed(settings.database_url, user_id)
        app = create_app(settings)

        @app.get("/bench/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

        token = jwt.encode(
            {"sub": user_id, "exp": datetime.now(UTC) + timedelta(hours=1)}, JWT_SECRET, algorithm="HS256"
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with client_for(app) as http:
            first = (await http.get("/api/v1/subscriptions", headers=headers)).json()
            assert len(first["subscriptions"]) == SUBSCRIPTIONS, first
            baseline = await load(
                lambda: http.get("/bench/hello"), concurrency=CONCURRENCY, requests=REQUESTS
            )
            measured = await load(
                lambda: http.get("/api/v1/subscriptions", headers=headers),
                concurrency=CONCURRENCY,
                requests=REQUESTS,
            )
        print(baseline.line("hello (baseline)"))
        print(measured.line("GET /subscriptions (20)"))
        ratio = measured.throughput / baseline.throughput
        tail = measured.p99_ms / measured.p50_ms
        print(f"ratio {ratio:.2f}x hello (goal >= 0.28x); p99/p50 {tail:.2f} (goal <= 3)")
