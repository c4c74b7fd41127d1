"""Fakes at the HTTP boundary for usage aggregation: the metering service and Stripe's meter
events endpoint (mounted on a respx router)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import respx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import Subscription, UsageRecord
from tests.support.billing_data import World, make_world

METERING = "http://metering.test"


class Metering:
    """The metering service: `successful` calls per day, or down."""

    def __init__(self, mock: respx.MockRouter) -> None:
        self.down = False
        self.route = mock.get(url__startswith=f"{METERING}/api/v1/usage/subscription/")
        self.route.side_effect = self._answer

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        day = date.fromisoformat(request.url.params["start"])
        successful = 100 + day.day
        return httpx.Response(
            200,
            json={
                "subscription_id": request.url.path.rsplit("/", 1)[-1],
                "period_start": request.url.params["start"],
                "period_end": request.url.params["end"],
                "summary": {"total_calls": successful + 3, "successful_calls": successful, "failed_calls": 3},
                "recent_calls": [],
            },
        )


def meter_event_api(
    accepted: dict[str, dict[str, Any]],
    fail_calls: set[int] | None = None,
    refuse: Callable[[httpx.QueryParams], bool] | None = None,
) -> Any:
    """Stripe's POST /v1/billing/meter_events, with its identifier de-duplication and its replay
    of the first answer to a request repeated under the same Idempotency-Key.

    Calls whose (1-based) number is in `fail_calls` get a 500, as when Stripe has a bad moment;
    events `refuse` picks get the 400 Stripe gives an event it will not take.
    """
    calls = 0
    answered: dict[str, httpx.Response] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls in (fail_calls or set()):
            return httpx.Response(500, json={"error": {"type": "api_error", "message": "try again"}})
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in answered:
            first = answered[key]
            return httpx.Response(
                first.status_code, json=first.json(), headers={"Idempotent-Replayed": "true"}
            )
        form = httpx.QueryParams(request.content.decode())
        identifier = form["identifier"]
        if refuse is not None and refuse(form):
            error = {
                "type": "invalid_request_error",
                "code": "parameter_invalid_integer",
                "param": "payload[value]",
            }
            response = httpx.Response(400, json={"error": {**error, "message": "Invalid value"}})
        elif identifier in accepted:
            message = f"An event already exists with identifier {identifier}"
            response = httpx.Response(
                400, json={"error": {"type": "invalid_request_error", "message": message}}
            )
        else:
            accepted[identifier] = {
                "object": "billing.meter_event",
                "event_name": form["event_name"],
                "identifier": identifier,
                "payload": {
                    "stripe_customer_id": form["payload[stripe_customer_id]"],
                    "value": form["payload[value]"],
                },
                "timestamp": int(form["timestamp"]),
                "created": int(form["timestamp"]),
                "livemode": False,
            }
            response = httpx.Response(200, json=accepted[identifier])
        if key is not None:
            answered[key] = response
        return response

    return answer


async def pay_per_use(
    engine: AsyncEngine, days_ago: int = 3, *, started_at: datetime | None = None, **extra: Any
) -> World:
    """An active pay-per-use subscription (0.01 a call) started `days_ago` days ago, or at
    `started_at`."""
    return await make_world(
        engine,
        plan_type="pay_per_use",
        monthly_amount=None,
        price_per_call=Decimal("0.01"),
        status="active",
        started_at=started_at if started_at is not None else datetime.now(UTC) - timedelta(days=days_ago),
        **extra,
    )


async def closing_pay_per_use(engine: AsyncEngine, start: datetime, end: datetime) -> World:
    """A pay-per-use subscription started at `start`, in its current period [start, end)."""
    world = await pay_per_use(engine, started_at=start)
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == world.subscription_id)
            .values(current_period_start=start, current_period_end=end)
        )
    return world


async def usage_windows(engine: AsyncEngine, subscription_id: uuid.UUID | None = None) -> list[Any]:
    """The recorded usage windows (`usage_records`), oldest first, of one subscription or all."""
    async with engine.connect() as connection:
        statement = select(UsageRecord).order_by(UsageRecord.window_start)
        if subscription_id is not None:
            statement = statement.where(UsageRecord.subscription_id == subscription_id)
        return list((await connection.execute(statement)).all())
