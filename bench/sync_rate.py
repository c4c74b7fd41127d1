"""`billing sync` at Stripe's rate limit, against a wire-level fake that enforces it.

    python -m bench sync_rate

A small ASGI app on 127.0.0.1 (uvicorn, in this process) answers the lists `billing sync` pages
through (customers, their cards, subscriptions, invoices) in Stripe's shapes, and enforces
STRIPE_RATE_LIMIT_PER_SECOND as Stripe's request limiter does, a token bucket (one second of
burst, refilled at the rate), answering 429 with Stripe's error body beyond it. Our embedded
PostgreSQL holds the consumers of the customers, so every customer's cards are asked for.

Two runs:
  - steady: the fake enforces the configured rate. Goal: the sync uses >= 90% of it, zero 429s;
  - squeezed: for a few seconds mid-run the fake halves its limit (Stripe lowering limits, or
    another client on the account). Goal: the sync completes, its pace during the squeeze stays
    within the lowered limit once it has backed off, and it sees only a few 429s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.dev.processes import free_port
from app.stripe import StripeGateway
from app.sync.service import SyncService
from bench.harness import Figure, embedded_stack

RATE = 25  # Stripe's test-mode limit, and our default STRIPE_RATE_LIMIT_PER_SECOND
CUSTOMERS = 300
OTHER_OBJECTS = 200  # subscriptions and invoices of customers not ours: our database's work
USE_GOAL = 0.90
SQUEEZE_AFTER, SQUEEZE_SECONDS = 3.0, 4.0
MAX_SQUEEZED_429S = 12


@dataclass
class Bucket:
    """Stripe-style request limiter: `rate` tokens a second, at most `rate` banked."""

    rate: float
    tokens: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def take(self, rate: float) -> bool:
        now = time.monotonic()
        self.rate = rate
        self.tokens = min(rate, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class FakeStripe:
    rate: float
    squeeze: tuple[float, float] | None = None  # (start, end) seconds after the first request
    answered: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status)
    started: float | None = None

    def limit_now(self, now: float) -> float:
        if self.started is not None and self.squeeze is not None:
            start, end = self.squeeze
            if start <= now - self.started < end:
                return self.rate / 2
        return self.rate

    def app(self) -> Starlette:
        customers = [f"cus_rate{n:05d}" for n in range(CUSTOMERS)]
        bucket = Bucket(self.rate)

        def page(request: Request, ids: list[str], make: Any, url: str) -> dict[str, Any]:
            limit = int(request.query_params.get("limit", "10"))
            after = request.query_params.get("starting_after")
            first = ids.index(after) + 1 if after else 0
            chosen = ids[first : first + limit]
            return {
                "object": "list",
                "url": url,
                "has_more": first + limit < len(ids),
                "data": [make(n, i) for n, i in enumerate(chosen, start=first)],
            }

        def customer(n: int, id_: str) -> dict[str, Any]:
            return {
                "id": id_, "object": "customer", "email": f"rate-{n}@example.com", "created": 1_700_000_000,
                "invoice_settings": {"default_payment_method": None}, "livemode": False, "metadata": {},
            }  # fmt: skip

        def subscription(n: int, id_: str) -> dict[str, Any]:
            return {
                "id": id_, "object": "subscription", "customer": f"cus_elsewhere{n}", "status": "active",
                "created": 1_700_000_000, "cancel_at_period_end": False, "metadata": {},
                "items": {"object": "list", "data": [], "has_more": False},
            }  # fmt: skip

        def invoice(n: int, id_: str) -> dict[str, Any]:
            return {
                "id": id_, "object": "invoice", "customer": f"cus_elsewhere{n}", "status": "paid",
                "currency": "usd", "amount_due": 2900, "amount_paid": 2900, "total": 2900, "subtotal": 2900,
                "created": 1_700_000_000,
                "lines": {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{id_}"},
            }  # fmt: skip

        subscriptions = [f"sub_rate{n:05d}" for n in range(OTHER_OBJECTS)]
        invoices = [f"in_rate{n:05d}" for n in range(OTHER_OBJECTS)]

        async def answer(request: Request) -> JSONResponse:
            now = time.monotonic()
            self.started = self.started or now
            if not bucket.take(self.limit_now(now)):
                self.answered.append((now, 429))
                error = {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                }
                return JSONResponse({"error": error}, status_code=429, headers={"Request-Id": "req_rate"})
            self.answered.append((now, 200))
            resource = request.path_params["resource"]
            if resource == "customers":
                return JSONResponse(page(request, customers, customer, "/v1/customers"))
            if resource == "subscriptions":
                return JSONResponse(page(request, subscriptions, subscription, "/v1/subscriptions"))
            if resource == "invoices":
                return JSONResponse(page(request, invoices, invoice, "/v1/invoices"))
            owner = request.query_params["customer"]
            card = {
                "id": f"pm_{owner[4:]}", "object": "payment_method", "type": "card", "customer": owner,
                "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030},
            }  # fmt: skip
            return JSONResponse(
                {"object": "list", "url": "/v1/payment_methods", "has_more": False, "data": [card]}
            )

        return Starlette(routes=[Route("/v1/{resource}", answer)])


async def _seed(database_url: str) -> None:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("DELETE FROM payment_methods")
        await connection.execute("DELETE FROM sync_runs")
        await connection.execute("DELETE FROM consumers")
        await connection.executemany(
            "INSERT INTO consumers (id, user_id, email, stripe_customer_id, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, now(), now())",
            [
                (uuid.uuid4(), f"rate-user-{n}", f"rate-{n}@example.com", f"cus_rate{n:05d}")
                for n in range(CUSTOMERS)
            ],
        )
    finally:
        await connection.close()


@dataclass(frozen=True)
class Outcome:
    seconds: float
    requests: int
    limited: int
    used: float  # requests per second over the run, as a share of the configured rate
    squeezed_rate: float  # answered per second in the settled part of the squeeze, share of the lowered limit


async def _run(settings: Settings, fake: FakeStripe) -> Outcome:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    await _seed(settings.database_url)
    wired = settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{port}"})
    engine = create_async_engine(settings.database_url, pool_size=4)
    try:
        service = SyncService(
            engine, async_sessionmaker(engine, expire_on_commit=False), StripeGateway(wired), None,
            rate_per_second=settings.stripe_rate_limit_per_second, commission=settings.platform_commission,
            dry_run=False,
        )  # fmt: skip
        run = await service.run()
        assert run.status == "completed", run.status
        assert run.report["customers"]["seen"] == CUSTOMERS, run.report
    finally:
        await engine.dispose()
        server.should_exit = True
        await serving
    times = [t for t, _ in fake.answered]
    seconds = times[-1] - times[0]
    requests = len(times)
    limited = sum(1 for _, status in fake.answered if status == 429)
    squeezed = 0.0
    if fake.squeeze is not None and fake.started is not None:
        # The second half of the squeeze: after the backoff, what pace did the sync settle at?
        start, end = fake.squeeze
        low, high = fake.started + (start + end) / 2, fake.started + end
        inside = sum(1 for t in times if low <= t < high)
        squeezed = inside / (high - low) / (fake.rate / 2)
    return Outcome(seconds, requests, limited, (requests - 1) / seconds / RATE, squeezed)


async def main() -> list[Figure]:
    async with embedded_stack() as settings:
        # The fake enforces the very limit the sync is configured with.
        assert settings.stripe_rate_limit_per_second == RATE, settings.stripe_rate_limit_per_second
        steady = await _run(settings, FakeStripe(RATE))
        squeezed = await _run(
            settings, FakeStripe(RATE, squeeze=(SQUEEZE_AFTER, SQUEEZE_AFTER + SQUEEZE_SECONDS))
        )
    print(
        f"steady:   {steady.requests} calls in {steady.seconds:.1f}s = {steady.used * RATE:.1f}/s "
        f"of {RATE}/s; {steady.limited} answered 429"
    )
    print(
        f"squeezed: {squeezed.requests} calls in {squeezed.seconds:.1f}s, limit {RATE // 2}/s for "
        f"{SQUEEZE_SECONDS:.0f}s: {squeezed.limited} answered 429; settled at "
        f"{squeezed.squeezed_rate:.2f}x the lowered limit; completed"
    )
    return [
        Figure("sync: share of the rate used", steady.used, USE_GOAL, at_least=True, detail=f"{RATE}/s"),
        Figure(
            "sync: 429s at the rate", steady.limited, 0, at_least=False, detail=f"{steady.requests} calls"
        ),
        Figure(
            "sync: 429s while the limit is halved",
            squeezed.limited,
            MAX_SQUEEZED_429S,
            at_least=False,
            detail=f"{SQUEEZE_SECONDS:g}s at {RATE / 2:g}/s; completed",
        ),
    ]
