"""The invoice mirror keeps Stripe's totals as Stripe reports them, credit (negative) totals
included, and every answer and document shows those numbers."""

from __future__ import annotations

import io

import httpx
from pypdf import PdfReader
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.auth import Auth
from tests.support.billing_data import event, make_world
from tests.support.earnings import paid_invoice
from tests.support.stripe_payments import T0
from tests.support.worker import Ctx, deliver


async def test_a_credit_invoice_keeps_stripes_negative_total_in_the_api_and_the_pdf(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, auth: Auth
) -> None:
    world = await make_world(engine, status="active", monthly_amount=1000)
    # A downgrade's proration: -500 unused, +300 remaining, 30 tax credited back with it.
    invoice = paid_invoice(world, "in_credit", [(-500, world.price), (300, world.price)], tax=-30)
    assert (invoice["subtotal"], invoice["total"], invoice["amount_due"]) == (-200, -230, 0)
    assert await deliver(client, worker_ctx, event("invoice.paid", invoice, created=T0 + 5)) == "processed"
    headers = auth(user_id=f"user-{world.customer.removeprefix('cus_')}")

    listed = (await client.get("/api/v1/invoices", headers=headers)).json()["invoices"]
    assert [(i["subtotal"], i["tax"], i["total"], i["amount_due"], i["amount_paid"]) for i in listed] == [
        (-200, -30, -230, 0, 0)
    ]
    detail = (await client.get(f"/api/v1/invoices/{listed[0]['id']}", headers=headers)).json()
    assert (detail["subtotal"], detail["tax"], detail["total"]) == (-200, -30, -230)
    assert [line["amount"] for line in detail["lines"]] == [-500, 300]

    response = await client.get(f"/api/v1/invoices/{listed[0]['id']}/pdf", headers=headers)
    assert response.status_code == 200
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    for expected in ("-2.00 USD", "-0.30 USD", "-2.30 USD", "Credited to balance", "2.30 USD is credited"):
        assert expected in text, expected


async def test_an_invoice_update_with_a_later_credit_total_replaces_the_stored_total(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, auth: Auth
) -> None:
    world = await make_world(engine, status="active", monthly_amount=1000)
    draft = paid_invoice(world, "in_swing", [(400, world.price)]) | {"status": "open", "amount_paid": 0}
    paid = paid_invoice(world, "in_swing", [(-900, world.price), (400, world.price)])
    await deliver(client, worker_ctx, event("invoice.finalized", draft, created=T0))
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=T0 + 5))
    headers = auth(user_id=f"user-{world.customer.removeprefix('cus_')}")

    listed = (await client.get("/api/v1/invoices", headers=headers)).json()["invoices"]

    assert [(i["status"], i["total"], i["amount_due"]) for i in listed] == [("paid", -500, 0)]
