"""Dev-only stand-ins for the API key and metering services, in the shapes of CONTRACT.md.

`billing dev` runs this when API_KEY_SERVICE_URL / METERING_SERVICE_URL are unset. State is in
memory; `POST /api/v1/usage/subscription/{id}/calls` lets a demo record traffic (and
`POST /api/v1/usage/calls` many subscriptions' at once), counted on the business clock's day
(BILLING_CLOCK, as for the API and the worker) when it names none. It is also a demo marketplace
endpoint for our events: `POST /marketplace/events` checks the signature
(secret `DEV_MARKETPLACE_SECRET`), `GET /marketplace/events` lists what arrived.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from collections import defaultdict
from datetime import date
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

from app import clock
from app.events.signature import SIGNATURE_HEADER, verify

DEV_MARKETPLACE_SECRET = "whsec_dev_marketplace"  # noqa: S105  (the demo endpoint of `billing dev` only)
MARKETPLACE_EVENTS_PATH = "/marketplace/events"


class KeyRequest(BaseModel):
    name: str
    subscription_id: str


class CallsRequest(BaseModel):
    day: date | None = None
    successful: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)


class SubscriptionCalls(CallsRequest):
    subscription_id: str


class BulkCallsRequest(BaseModel):
    calls: list[SubscriptionCalls]


def build_app() -> FastAPI:
    app = FastAPI(title="dev siblings")
    keys: dict[str, dict[str, Any]] = {}
    calls: dict[str, dict[date, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))

    @app.post("/api/v1/keys", status_code=201)
    async def create_key(body: KeyRequest) -> dict[str, Any]:
        key_id = secrets.token_hex(8)
        api_key = "mk_" + secrets.token_urlsafe(24)
        info = {
            "id": key_id,
            "key_prefix": api_key[:8],
            "name": body.name,
            "subscription_id": body.subscription_id,
            "created_at": clock.now().isoformat(),
        }
        keys[key_id] = info
        return {"api_key": api_key, "key_info": info}

    @app.get("/api/v1/keys/{key_id}")
    async def get_key(key_id: str) -> dict[str, Any]:
        """Dev only: whether a key exists (a simulation checks keys exist exactly while live)."""
        if key_id not in keys:
            raise HTTPException(404, "key not found")
        return keys[key_id]

    @app.delete("/api/v1/keys/{key_id}", status_code=204)
    async def delete_key(key_id: str) -> Response:
        if keys.pop(key_id, None) is None:
            raise HTTPException(404, "key not found")
        return Response(status_code=204)

    @app.post("/api/v1/usage/subscription/{subscription_id}/calls", status_code=204)
    async def record_calls(subscription_id: str, body: CallsRequest) -> Response:
        counts = calls[subscription_id][body.day or clock.today()]
        counts[0] += body.successful
        counts[1] += body.failed
        return Response(status_code=204)

    @app.post("/api/v1/usage/calls", status_code=204)
    async def record_many_calls(body: BulkCallsRequest) -> Response:
        """Many subscriptions' traffic at once (a simulation's day of calls in one request)."""
        for item in body.calls:
            counts = calls[item.subscription_id][item.day or clock.today()]
            counts[0] += item.successful
            counts[1] += item.failed
        return Response(status_code=204)

    @app.get("/api/v1/usage/subscription/{subscription_id}")
    async def usage(subscription_id: str, start: date, end: date) -> dict[str, Any]:
        days = {d: c for d, c in calls[subscription_id].items() if start <= d <= end}
        successful = sum(c[0] for c in days.values())
        failed = sum(c[1] for c in days.values())
        return {
            "subscription_id": subscription_id,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "summary": {
                "total_calls": successful + failed,
                "successful_calls": successful,
                "failed_calls": failed,
            },
            "recent_calls": [],
        }

    received: list[dict[str, Any]] = []

    @app.post(MARKETPLACE_EVENTS_PATH)
    async def marketplace_event(request: Request) -> dict[str, bool]:
        body = await request.body()
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not verify(body, header, DEV_MARKETPLACE_SECRET, now=int(time.time())):
            raise HTTPException(400, "bad signature")
        received.append({"signature_verified": True, **orjson.loads(body)})
        del received[:-200]
        return {"received": True}

    @app.get(MARKETPLACE_EVENTS_PATH)
    async def marketplace_events() -> dict[str, list[dict[str, Any]]]:
        return {"events": received}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Dev stand-ins for the API key and metering services")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if os.environ.get("BILLING_CLOCK", "system") != "system":
        from app.config import load_settings
        from app.stripe.test_clocks import business_clock

        clock.install(business_clock(load_settings()))
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
