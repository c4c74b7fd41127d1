"""Nothing is sent that we did not record: a custom invoice is committed before any Stripe call,
and a retry after a failure finishes the same Stripe invoice with the same idempotency keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import httpx
import respx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import Consumer, CustomInvoice, Invoice
from tests.support.auth import Auth
from tests.support.custom_invoices import BODY, StripeInvoices

StripeAnswer = Callable[[httpx.Request], httpx.Response]


async def _custom_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(CustomInvoice))).all())


def _keys(route: respx.Route) -> set[str]:
    return {call.request.headers["idempotency-key"] for call in route.calls}


async def test_custom_invoice_is_committed_before_the_first_stripe_call(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    _, routes = stripe_invoices
    create_invoice = cast("StripeAnswer", routes["create"].side_effect)
    seen_when_stripe_was_called: list[list[Any]] = []

    async def create_after_checking(request: httpx.Request) -> httpx.Response:
        # Another connection: only what has committed is visible.
        seen_when_stripe_was_called.append(await _custom_rows(engine))
        return create_invoice(request)

    routes["create"].side_effect = create_after_checking
    response = await client.post(
        "/api/v1/admin/invoices", json={"consumer_id": str(alice.id), **BODY}, headers=auth("admin")
    )

    assert response.status_code == 201, response.text
    [[recorded]] = seen_when_stripe_was_called
    assert str(recorded.id) == response.json()["id"]
    assert recorded.state == "pending"
    assert recorded.consumer_id == alice.id
    assert [line["unit_amount"] for line in recorded.lines] == [75000, 19999]
    [done] = await _custom_rows(engine)
    assert (done.state, done.stripe_invoice_id) == ("sent", response.json()["stripe_invoice_id"])


async def test_failure_after_stripe_sent_leaves_it_recorded_and_the_retry_sends_no_second_invoice(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    fake, routes = stripe_invoices
    headers = auth("admin", user_id="admin-1") | {"Idempotency-Key": "order-9"}
    payload = {"consumer_id": str(alice.id), **BODY}
    send_invoice = cast("StripeAnswer", routes["send"].side_effect)

    def sent_but_the_answer_was_lost(request: httpx.Request) -> httpx.Response:
        send_invoice(request)
        raise httpx.ReadTimeout("connection lost after Stripe sent the invoice", request=request)

    routes["send"].side_effect = sent_but_the_answer_was_lost
    failed = await client.post("/api/v1/admin/invoices", json=payload, headers=headers)
    assert failed.status_code == 502, failed.text
    assert failed.json()["code"] == "stripe_unreachable"

    # We know what Stripe holds: the request and the Stripe invoice it made.
    [pending] = await _custom_rows(engine)
    assert (pending.state, pending.stripe_invoice_id) == ("pending", fake.invoice_id)
    assert pending.last_error

    routes["send"].side_effect = send_invoice
    retried = await client.post("/api/v1/admin/invoices", json=payload, headers=headers)
    assert retried.status_code == 201, retried.text
    invoice_id = retried.json()["id"]
    assert invoice_id == str(pending.id)
    assert retried.json()["stripe_invoice_id"] == fake.invoice_id
    # Every Stripe call of both tries carried the key derived from our row: Stripe replays them.
    assert _keys(routes["create"]) == {f"invoice-create:{invoice_id}"}
    assert _keys(routes["finalize"]) == {f"invoice-finalize:{invoice_id}"}
    assert _keys(routes["send"]) == {f"invoice-send:{invoice_id}"}
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(Invoice))).scalar_one() == 1
    [done] = await _custom_rows(engine)
    assert (done.state, done.last_error) == ("sent", None)
