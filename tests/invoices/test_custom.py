"""Admin one-off invoices: end to end against the Stripe emulator (its dev extension creates,
finalises and sends one-off invoices), and Stripe's wire calls checked with respx in Stripe's
documented shapes (numbers, PDF URLs and tax, which the emulator does not produce)."""

from __future__ import annotations

import json
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import Consumer, Invoice
from tests.support.auth import Auth
from tests.support.custom_invoices import BODY, STRIPE_PDF, StripeInvoices, flat_form_of
from tests.support.stripe_side import emulator


async def test_admin_creates_sends_and_mirrors_a_custom_invoice(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    fake, routes = stripe_invoices

    response = await client.post(
        "/api/v1/admin/invoices", json={"consumer_id": str(alice.id), **BODY}, headers=auth("admin")
    )

    assert response.status_code == 201, response.text
    body = response.json()
    invoice_id = body["id"]
    assert body["stripe_invoice_id"] == fake.invoice_id
    assert (body["number"], body["status"], body["currency"]) == ("MKT-0001", "open", "usd")
    assert (body["subtotal"], body["tax"], body["total"], body["amount_due"]) == (169999, 0, 169999, 169999)
    assert [
        (line["description"], line["quantity"], line["unit_amount"], line["amount"]) for line in body["lines"]
    ] == [
        ("Integration workshop", 2, 75000, 150000),
        ("Dedicated support, March", 1, 19999, 19999),
    ]
    created = flat_form_of(routes["create"].calls.last.request)
    assert created["customer"] == alice.stripe_customer_id
    assert created["collection_method"] == "send_invoice"
    assert created["pending_invoice_items_behavior"] == "exclude"
    assert created["automatic_tax[enabled]"] == "false"
    keys = [call.request.headers["idempotency-key"] for route in routes.values() for call in route.calls]
    assert keys == [
        f"invoice-create:{invoice_id}",
        f"invoice-item:{invoice_id}:0",
        f"invoice-item:{invoice_id}:1",
        f"invoice-finalize:{invoice_id}",
        f"invoice-send:{invoice_id}",
    ]

    consumer_headers = auth(user_id="alice")
    listed = (await client.get("/api/v1/invoices", headers=consumer_headers)).json()["invoices"]
    assert [i["id"] for i in listed] == [invoice_id]
    download = await client.get(f"/api/v1/invoices/{invoice_id}/download", headers=consumer_headers)
    assert download.json() == {"download_url": STRIPE_PDF}
    pdf = await client.get(f"/api/v1/invoices/{invoice_id}/pdf", headers=consumer_headers)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"


async def test_retried_custom_invoice_with_same_idempotency_key_makes_one_invoice(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    _, routes = stripe_invoices
    headers = auth("admin", user_id="admin-1") | {"Idempotency-Key": "order-7"}
    payload = {"consumer_id": str(alice.id), **BODY}

    first = await client.post("/api/v1/admin/invoices", json=payload, headers=headers)
    second = await client.post("/api/v1/admin/invoices", json=payload, headers=headers)

    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    create_keys = {call.request.headers["idempotency-key"] for call in routes["create"].calls}
    assert create_keys == {f"invoice-create:{first.json()['id']}"}
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(Invoice))).scalar_one() == 1


async def test_tax_setting_turns_on_automatic_tax_and_the_tax_is_mirrored_and_printed(
    taxed_client: httpx.AsyncClient,
    auth: Auth,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    fake, routes = stripe_invoices
    fake.tax_rate = 10

    response = await taxed_client.post(
        "/api/v1/admin/invoices", json={"consumer_id": str(alice.id), **BODY}, headers=auth("admin")
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert flat_form_of(routes["create"].calls.last.request)["automatic_tax[enabled]"] == "true"
    assert (body["subtotal"], body["tax"], body["total"]) == (169999, 15000 + 1999, 169999 + 16999)
    assert [line["tax"] for line in body["lines"]] == [15000, 1999]


async def test_custom_invoice_needs_admin_a_known_consumer_and_valid_lines(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_invoices: StripeInvoices,
    alice: Consumer,
) -> None:
    _, routes = stripe_invoices
    url = "/api/v1/admin/invoices"
    payload = {"consumer_id": str(alice.id), **BODY}

    assert (await client.post(url, json=payload, headers=auth("creator"))).status_code == 403
    unknown = {**payload, "consumer_id": str(uuid.uuid4())}
    assert (await client.post(url, json=unknown, headers=auth("admin"))).status_code == 404
    for bad in (
        {**payload, "lines": []},
        {**payload, "currency": "xyz"},
        {**payload, "lines": [{"description": "x", "quantity": 1, "unit_amount": 9.99}]},
        {**payload, "lines": [{"description": "", "quantity": 1, "unit_amount": 100}]},
    ):
        response = await client.post(
            url, content=json.dumps(bad), headers=auth("admin") | {"content-type": "application/json"}
        )
        assert response.status_code == 422, bad
    assert not routes["create"].called


async def _events_of(stripe: httpx.AsyncClient, object_id: str) -> list[str]:
    events = (await stripe.get("/v1/events", params={"limit": 100})).json()["data"]
    return sorted(e["type"] for e in events if e["data"]["object"]["id"] == object_id)


async def test_custom_invoice_through_the_emulator_is_listed_open_with_its_total_and_a_pdf(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    consumer_headers = auth("consumer", user_id="bob-emu", email="bob@example.com")
    registered = (await client.post("/api/v1/consumers/register", headers=consumer_headers)).json()
    customer = registered["stripe_customer_id"]
    async with emulator(settings) as stripe:
        # A pending item of the customer's stays out of the one-off invoice.
        pending = await stripe.post(
            "/v1/invoiceitems", data={"customer": customer, "amount": 500, "currency": "usd"}
        )
        assert pending.status_code == 200, pending.text
        admin = auth("admin", user_id="admin-emu") | {"Idempotency-Key": "order-emu-1"}
        payload = {"consumer_id": registered["consumer_id"], **BODY}

        created = await client.post("/api/v1/admin/invoices", json=payload, headers=admin)
        retried = await client.post("/api/v1/admin/invoices", json=payload, headers=admin)

        assert created.status_code == retried.status_code == 201, created.text
        body = created.json()
        assert retried.json()["id"] == body["id"]
        assert (body["status"], body["currency"], body["total"], body["amount_due"]) == (
            "open",
            "usd",
            169999,
            169999,
        )
        assert body["number"]
        assert [
            (line["description"], line["quantity"], line["unit_amount"], line["amount"])
            for line in body["lines"]
        ] == [
            ("Integration workshop", 2, 75000, 150000),
            ("Dedicated support, March", 1, 19999, 19999),
        ]
        stripe_invoices = (await stripe.get("/v1/invoices", params={"customer": customer})).json()["data"]
        assert [i["id"] for i in stripe_invoices] == [body["stripe_invoice_id"]]
        (invoice,) = stripe_invoices
        assert (invoice["collection_method"], invoice["status"], invoice["number"]) == (
            "send_invoice",
            "open",
            body["number"],
        )
        assert invoice["due_date"] == invoice["created"] + settings.invoice_days_until_due * 86400
        assert invoice["metadata"] == {
            "invoice_id": body["id"],
            "consumer_id": registered["consumer_id"],
            "kind": "custom",
        }
        # The events Stripe sends over the invoice's life, as the emulator records them.
        expected = ["invoice.created", "invoice.finalized", "invoice.sent"]
        assert await _events_of(stripe, invoice["id"]) == expected

    listed = (await client.get("/api/v1/invoices", headers=consumer_headers)).json()["invoices"]
    assert [(i["id"], i["status"], i["total"], i["number"]) for i in listed] == [
        (body["id"], "open", 169999, body["number"])
    ]
    download = await client.get(f"/api/v1/invoices/{body['id']}/download", headers=consumer_headers)
    assert download.json() == {"download_url": f"/api/v1/invoices/{body['id']}/pdf"}
    pdf = await client.get(download.json()["download_url"], headers=consumer_headers)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")


async def test_emulator_adds_items_to_drafts_only_and_finalizes_once(
    auth: Auth, client: httpx.AsyncClient, settings: Settings
) -> None:
    registered = (await client.post("/api/v1/consumers/register", headers=auth("consumer"))).json()
    customer = registered["stripe_customer_id"]
    async with emulator(settings) as stripe:
        draft = (
            await stripe.post(
                "/v1/invoices",
                data={
                    "customer": customer,
                    "currency": "jpy",
                    "collection_method": "send_invoice",
                    "days_until_due": 7,
                },
            )
        ).json()
        item = await stripe.post(
            "/v1/invoiceitems",
            data={"customer": customer, "invoice": draft["id"], "quantity": 3, "unit_amount": 250},
        )
        assert item.status_code == 200, item.text
        assert (
            item.json()["amount"],
            item.json()["quantity"],
            item.json()["pricing"]["unit_amount_decimal"],
        ) == (750, 3, "250")
        other_currency = await stripe.post(
            "/v1/invoiceitems",
            data={
                "customer": customer,
                "invoice": draft["id"],
                "currency": "usd",
                "unit_amount_decimal": "1.5",
            },
        )
        assert other_currency.status_code == 400

        finalized = await stripe.post(f"/v1/invoices/{draft['id']}/finalize")
        again = await stripe.post(f"/v1/invoices/{draft['id']}/finalize")
        late_item = await stripe.post(
            "/v1/invoiceitems", data={"customer": customer, "invoice": draft["id"], "unit_amount": 1}
        )

        assert finalized.status_code == 200, finalized.text
        invoice = finalized.json()
        assert (
            invoice["status"],
            invoice["currency"],
            invoice["subtotal"],
            invoice["total"],
            invoice["amount_due"],
        ) == (
            "open",
            "jpy",
            750,
            750,
            750,
        )
        assert invoice["number"].endswith("-0001")
        assert invoice["status_transitions"]["finalized_at"] is not None
        assert [
            (line["quantity"], line["amount"], line["pricing"]["unit_amount_decimal"])
            for line in invoice["lines"]["data"]
        ] == [(3, 750, "250")]
        assert (again.status_code, late_item.status_code) == (400, 400)
        sent = await stripe.post(f"/v1/invoices/{draft['id']}/send")
        assert sent.status_code == 200
        assert sent.json()["status"] == "open"
