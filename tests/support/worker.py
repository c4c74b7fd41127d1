"""Driving the worker as Stripe and arq do: a signed webhook posted, then the worker's job run."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.base import Base
from app.webhooks.jobs import process_stripe_event
from tests.support.factories import sign_webhook

# The arq job context the worker entry points receive (see the `worker_ctx` fixture).
Ctx = dict[str, Any]


async def send(client: httpx.AsyncClient, payload: dict[str, Any] | bytes) -> httpx.Response:
    """Stripe sends the event (or a body of bytes) to our webhook endpoint, signed: our answer."""
    body, header = sign_webhook(payload)
    return await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": header})


async def post(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    """Stripe sends the event to our webhook endpoint, signed; we answer 200."""
    response = await send(client, payload)
    assert response.status_code == 200, response.text


async def deliver(client: httpx.AsyncClient, ctx: Ctx, payload: dict[str, Any]) -> str | None:
    """Stripe sends the event; the worker's job runs it."""
    await post(client, payload)
    return await process_stripe_event(ctx, payload["id"])


async def one(engine: AsyncEngine, model: Any, **where: Any) -> Any:
    async with engine.connect() as connection:
        statement = select(model).filter_by(**where)
        return (await connection.execute(statement)).one()


async def rows(engine: AsyncEngine, model: Any, **where: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(model).filter_by(**where))).all())


async def truncate(engine: AsyncEngine) -> None:
    """Empty every table: before each test that uses the database (tests/conftest.py), and in a test
    that starts over within itself."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
