"""Webhook ingest (verify + persist + enqueue) against a no-op POST of the same app.

Both run in one process on embedded PostgreSQL and Redis, through the same httpx client over
ASGI, with the same concurrency (the no-op route matched first, so it pays no more routing than
the webhook route), in ROUNDS short pairs whose order alternates (ABBA): this machine's speed
drifts by half within seconds (no-op passes of one run at 1,900 to 2,800 requests/s), so both
sides of a pair are kept close in time and neither always goes first. The ratio is the median of
the pairs' ingest throughput / no-op throughput (goal >= 0.8).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from app.main import create_app
from bench.harness import WEBHOOK_SECRET, Figure, LoadResult, alternating, client_for, embedded_stack, load
from tests.support.factories import sign_webhook

GOAL = 0.80
REQUESTS = 600
ROUNDS = 15
CONCURRENCY = 32


def signed_event() -> tuple[bytes, dict[str, str]]:
    event: dict[str, Any] = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.paid",
        "created": int(time.time()),
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {
            "object": {
                "id": f"in_{uuid.uuid4().hex[:24]}",
                "object": "invoice",
                "customer": "cus_bench",
                "status": "paid",
                "amount_due": 2900,
                "amount_paid": 2900,
                "currency": "usd",
                "lines": {"data": [{"id": "il_1", "amount": 2900, "currency": "usd"}]},
            }
        },
    }
    body, header = sign_webhook(orjson.dumps(event), secret=WEBHOOK_SECRET)
    return body, {"Stripe-Signature": header}


async def main() -> list[Figure]:
    async with embedded_stack() as settings:
        app = create_app(settings)

        @app.post("/bench/noop")
        async def noop() -> dict[str, bool]:
            return {"received": True}

        # Matched first, ahead of the webhook route: the baseline pays no more routing than ingest.
        app.router.routes.insert(0, app.router.routes.pop())

        async with client_for(app) as client:
            sample, sample_headers = signed_event()
            fresh: Iterator[tuple[bytes, dict[str, str]]] = iter([])

            async def ingest() -> httpx.Response:
                body, headers = next(fresh)
                return await client.post("/webhooks/stripe", content=body, headers=headers)

            async def no_op() -> httpx.Response:
                return await client.post("/bench/noop", content=sample, headers=sample_headers)

            rounds: list[tuple[LoadResult, LoadResult]] = []
            for round_ in range(ROUNDS):
                # Each ingest request is a new, freshly signed event (warm-up included).
                fresh = iter([signed_event() for _ in range(REQUESTS + 50)])
                rounds.append(
                    await alternating(
                        round_,
                        lambda: load(no_op, concurrency=CONCURRENCY, requests=REQUESTS),
                        lambda: load(ingest, concurrency=CONCURRENCY, requests=REQUESTS),
                    )
                )
    baseline, measured = sorted(rounds, key=lambda r: r[1].throughput / r[0].throughput)[ROUNDS // 2]
    ratio = measured.throughput / baseline.throughput
    print("rounds: " + ", ".join(f"{m.throughput / b.throughput:.2f}" for b, m in rounds))
    print(baseline.line("no-op POST"))
    print(measured.line("webhook ingest"))
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"ratio ingest/no-op: {ratio:.2f}x ({verdict} the goal >= {GOAL:.2f}x; median of {ROUNDS} rounds)")
    return [
        Figure("webhook ingest / no-op POST", ratio, GOAL, at_least=True, detail=f"median of {ROUNDS} rounds")
    ]
