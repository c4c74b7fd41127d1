"""GET /api/v1/subscriptions for a consumer with 20 subscriptions, against a hello endpoint of the
same app, same client, concurrency 8, on embedded PostgreSQL, in alternating rounds (the median
round counts). Goals: >= 0.28x the hello throughput, and a p99 no more than 3x its own median.

Then the table grows tenfold (1,000 other consumers with 20 subscriptions each, then 10,000) and
the same consumer's page is measured again: a keyed read costs within 1.2x of its cost at 1x
(cost relative to hello, measured at each size), and EXPLAIN shows the consumer index used."""

from __future__ import annotations

import statistics
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.consumers.service import consumer_id_for
from app.main import create_app
from app.models import Api, Consumer, PricingPlan, PricingPlanVersion, Subscription
from app.subscriptions.repository import _PAGE_SQL
from bench.harness import JWT_SECRET, Figure, LoadResult, client_for, embedded_stack, load, second_database

SUBSCRIPTIONS = 20
CONCURRENCY = 8
REQUESTS = 1000
ROUNDS = 5
OTHERS = 1000  # other consumers at 1x, 20 subscriptions each
GROWTH = 10
GROWTH_GOAL = 1.2
GROWTH_ROUNDS = 5
GROWTH_REQUESTS = 600
INDEX = "ix_subscriptions_consumer_created"

GROW_SQL = [
    """
    INSERT INTO consumers (id, user_id, email, stripe_customer_id, created_at, updated_at)
    SELECT gen_random_uuid(), 'bench-other-' || n, 'bench-other-' || n || '@example.com', 'cus_o' || n,
           now(), now()
    FROM generate_series($1::int, $2::int - 1) n
    """,
    """
    INSERT INTO subscriptions (id, consumer_id, api_id, pricing_plan_id, plan_version, status,
                               api_key_suspended, started_at, cancel_at_period_end, created_at, updated_at)
    SELECT gen_random_uuid(), c.id, p.api_id, p.id, 1, 'active', false, now(), false, now(), now()
    FROM consumers c CROSS JOIN api_pricing_plans p
    WHERE c.user_id IN (SELECT 'bench-other-' || n FROM generate_series($1::int, $2::int - 1) n)
    """,
]


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


async def grow(database_url: str, first: int, last: int) -> int:
    """Other consumers `first`..`last - 1`, each subscribed to the 20 APIs; the table's row count."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for statement in GROW_SQL:
            await connection.execute(statement, first, last)
        await connection.execute("VACUUM ANALYZE")
        return int(await connection.fetchval("SELECT count(*) FROM subscriptions"))
    finally:
        await connection.close()


async def explain(database_url: str, consumer_id: uuid.UUID) -> str:
    statement = _PAGE_SQL[(False, False)]
    params = {"consumer_id": consumer_id, "limit": SUBSCRIPTIONS + 1}
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await connection.fetch("EXPLAIN " + statement.sql, *statement.args(params))
        return "\n".join(row[0] for row in rows)
    finally:
        await connection.close()


async def main() -> list[Figure]:
    async with embedded_stack() as settings:
        user_id = "bench-consumer"
        url_10x = await second_database(settings.database_url, "bench_10x")
        sizes = []
        for url, others in ((settings.database_url, OTHERS), (url_10x, OTHERS * GROWTH)):
            await seed(url, user_id)
            sizes.append(await grow(url, 0, others))
        app, app_10x = create_app(settings), create_app(settings.model_copy(update={"database_url": url_10x}))

        @app.get("/bench/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

        token = jwt.encode(
            {"sub": user_id, "exp": datetime.now(UTC) + timedelta(hours=1)}, JWT_SECRET, algorithm="HS256"
        )
        headers = {"Authorization": f"Bearer {token}"}
        growth_rounds: list[float] = []
        async with client_for(app) as http, client_for(app_10x) as http_10x:
            for client in (http, http_10x):
                first = (await client.get("/api/v1/subscriptions", headers=headers)).json()
                assert len(first["subscriptions"]) == SUBSCRIPTIONS, first
            # Hello and the page in alternating rounds, so that load from elsewhere on the machine
            # hits both alike; the median round's figures count.
            rounds: list[tuple[LoadResult, LoadResult]] = []
            for _ in range(ROUNDS):
                baseline = await load(
                    lambda: http.get("/bench/hello"), concurrency=CONCURRENCY, requests=REQUESTS
                )
                measured = await load(
                    lambda: http.get("/api/v1/subscriptions", headers=headers),
                    concurrency=CONCURRENCY,
                    requests=REQUESTS,
                )
                rounds.append((baseline, measured))
            # The same page from the 1x and the 10x table, in alternating rounds so that load from
            # elsewhere on the machine hits both alike.
            for _ in range(GROWTH_ROUNDS):
                at_1x = await load(
                    lambda: http.get("/api/v1/subscriptions", headers=headers),
                    concurrency=CONCURRENCY,
                    requests=GROWTH_REQUESTS,
                )
                at_10x = await load(
                    lambda: http_10x.get("/api/v1/subscriptions", headers=headers),
                    concurrency=CONCURRENCY,
                    requests=GROWTH_REQUESTS,
                )
                growth_rounds.append(at_1x.throughput / at_10x.throughput)
        plan = await explain(url_10x, consumer_id_for(user_id))
    ratios = [m.throughput / b.throughput for b, m in rounds]
    baseline, measured = sorted(rounds, key=lambda r: r[1].throughput / r[0].throughput)[ROUNDS // 2]
    print(baseline.line("hello (baseline)"))
    print(measured.line("GET /subscriptions (20)"))
    print("rounds: " + ", ".join(f"{r:.2f}x" for r in ratios))
    ratio = measured.throughput / baseline.throughput
    tail = measured.p99_ms / measured.p50_ms
    growth = statistics.median(growth_rounds)
    print(f"ratio {ratio:.2f}x hello (goal >= 0.28x); p99/p50 {tail:.2f} (goal <= 3)")
    growth_text = ", ".join(f"{r:.2f}" for r in growth_rounds)
    print(
        f"{sizes[0]:,} -> {sizes[1]:,} subscriptions: cost {growth:.2f}x (goal <= {GROWTH_GOAL}; "
        f"median of rounds {growth_text})"
    )
    print(f"EXPLAIN at 10x:\n{plan}")
    return [
        Figure("read path: GET /subscriptions (20) / hello", ratio, 0.28, at_least=True),
        Figure("read path: p99 / p50", tail, 3, at_least=False),
        Figure(
            "read path: cost at 10x rows / at 1x",
            growth,
            GROWTH_GOAL,
            at_least=False,
            detail=f"{sizes[0]:,} -> {sizes[1]:,} rows",
        ),
        Figure(
            "read path: EXPLAIN at 10x uses the consumer index",
            float(INDEX in plan),
            1,
            at_least=True,
            detail=INDEX,
        ),
    ]
