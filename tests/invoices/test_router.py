from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from pypdf import PdfReader
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.invoices.pdf import format_unit_price
from app.invoices.stripe_sync import sync_invoice
from app.money import format_amount
from app.stripe.invoices import StripeInvoice
from tests.support import rows
from tests.support.auth import Auth

SUBSCRIPTION_LINE = {
    "description": "Pro plan (monthly)",
    "plan_id": None,
    "period_start": "2026-03-01T00:00:00+00:00",
    "period_end": "2026-04-01T00:00:00+00:00",
    "quantity": 1,
    "unit_amount": "2900",
    "amount": 2900,
    "tax": 232,
    "currency": "usd",
}


def _pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


async def test_list_shows_only_own_invoices_newest_first(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice, bob = rows.consumer("alice"), rows.consumer("bob")
    older = rows.invoice(alice, created_at=rows.T0)
    newer = rows.invoice(alice, created_at=rows.T0 + timedelta(days=31))
    await rows.add(engine, alice, bob, older, newer, rows.invoice(bob))

    response = await client.get("/api/v1/invoices", headers=auth(user_id="alice"))

    assert response.status_code == 200
    body = response.json()
    assert [i["id"] for i in body["invoices"]] == [str(newer.id), str(older.id)]
    assert body["next_cursor"] is None
    first = body["invoices"][0]
    assert {
        "id",
        "stripe_invoice_id",
        "consumer_id",
        "number",
        "amount_paid",
        "amount_due",
        "currency",
    } <= set(first)
    assert first["status"] == "paid"
    assert first["amount_paid"] == 2900
    assert first["currency"] == "usd"


async def test_list_pages_with_cursor_until_null(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    invoices = [rows.invoice(alice, created_at=rows.T0 + timedelta(hours=i)) for i in range(5)]
    await rows.add(engine, alice, *invoices)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/api/v1/invoices", params=params, headers=auth(user_id="alice"))).json()
        seen += [i["id"] for i in body["invoices"]]
        cursor = body["next_cursor"]
    assert cursor is None
    assert seen == [str(i.id) for i in reversed(invoices)]


async def test_list_filters_by_status_subscription_and_dates(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    api = rows.api("creator-1")
    plan, version = rows.plan(api)
    sub = rows.subscription(alice, plan)
    march = rows.invoice(alice, subscription_id=sub.id, created_at=datetime(2026, 3, 15, 12, tzinfo=UTC))
    april_open = rows.invoice(
        alice, status="open", amount_paid=0, created_at=datetime(2026, 4, 2, tzinfo=UTC)
    )
    await rows.add(engine, alice, api, plan, version, sub, march, april_open)
    headers = auth(user_id="alice")

    async def ids(**params: str) -> list[str]:
        response = await client.get("/api/v1/invoices", params=params, headers=headers)
        assert response.status_code == 200
        return [i["id"] for i in response.json()["invoices"]]

    assert await ids(status="open") == [str(april_open.id)]
    assert await ids(subscription_id=str(sub.id)) == [str(march.id)]
    assert await ids(**{"from": "2026-03-01", "to": "2026-03-15"}) == [str(march.id)]
    assert await ids(**{"from": "2026-03-16"}) == [str(april_open.id)]
    assert await ids(**{"from": "2026-03-15T12:00:01Z"}) == [str(april_open.id)]
    assert await ids(to="2026-03-15T12:00:00Z") == [str(march.id)]


async def test_list_rejects_bad_filters_with_422(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = auth()
    for params in (
        {"from": "2026-05-01", "to": "2026-04-01"},
        {"from": "yesterday"},
        {"status": "settled"},
        {"limit": "101"},
        {"cursor": "not-a-cursor"},
    ):
        response = await client.get("/api/v1/invoices", params=params, headers=headers)
        assert response.status_code == 422, params
        assert response.json()["code"] == "validation_error"


async def test_detail_has_lines_with_plan_period_quantity_price_amount_tax(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    api = rows.api("creator-1")
    plan, version = rows.plan(api, name="Pro")
    line = SUBSCRIPTION_LINE | {"plan_id": str(plan.id)}
    invoice = rows.invoice(alice, subtotal=2900, tax=232, total=3132, amount_paid=3132, lines=[line])
    await rows.add(engine, alice, api, plan, version, invoice)

    response = await client.get(f"/api/v1/invoices/{invoice.id}", headers=auth(user_id="alice"))

    assert response.status_code == 200
    body = response.json()
    assert body["tax"] == 232
    assert body["total"] == 3132
    assert body["lines"] == [
        {
            "description": "Pro plan (monthly)",
            "plan_id": str(plan.id),
            "plan_name": "Pro",
            "period_start": "2026-03-01T00:00:00Z",
            "period_end": "2026-04-01T00:00:00Z",
            "quantity": 1,
            "unit_amount": 2900,
            "amount": 2900,
            "tax": 232,
            "currency": "usd",
        }
    ]


async def test_a_mirrored_stripe_line_reads_back_unchanged_in_the_invoice_detail(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    await rows.add(engine, alice)
    stripe_line = {
        "object": "line_item",
        "amount": 150,
        "currency": "usd",
        "description": "1000 x API calls",
        "period": {"start": 1772323200, "end": 1774998000},
        "pricing": {"type": "price_details", "unit_amount_decimal": "0.15"},
        "quantity": 1000,
        "taxes": [{"amount": 12}],
        "metadata": {},
    }
    obj = _stripe_invoice(str(alice.stripe_customer_id), "open", "INV-1") | {"lines": {"data": [stripe_line]}}
    await _mirror(engine, obj, "Acme")
    [listed] = (await client.get("/api/v1/invoices", headers=auth(user_id="alice"))).json()["invoices"]

    detail = await client.get(f"/api/v1/invoices/{listed['id']}", headers=auth(user_id="alice"))
    [line] = detail.json()["lines"]

    assert (line["quantity"], line["unit_amount"], line["amount"], line["tax"]) == (1000, 0.15, 150, 12)
    assert (line["period_start"], line["period_end"]) == ("2026-03-01T00:00:00Z", "2026-03-31T23:00:00Z")
    assert line["description"] == "1000 x API calls"


async def test_other_consumers_invoice_is_404_everywhere(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice, bob = rows.consumer("alice"), rows.consumer("bob")
    invoice = rows.invoice(alice)
    await rows.add(engine, alice, bob, invoice)
    for suffix in ("", "/download", "/pdf"):
        response = await client.get(f"/api/v1/invoices/{invoice.id}{suffix}", headers=auth(user_id="bob"))
        assert response.status_code == 404, suffix
        assert response.json()["code"] == "not_found"


async def test_admin_reads_any_invoice(client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine) -> None:
    alice = rows.consumer("alice")
    invoice = rows.invoice(alice)
    await rows.add(engine, alice, invoice)
    response = await client.get(f"/api/v1/invoices/{invoice.id}", headers=auth("admin"))
    assert response.status_code == 200


async def test_download_prefers_stripes_pdf(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    stripe_pdf = "https://pay.stripe.com/invoice/acct_1/test_x/pdf"
    with_pdf, without_pdf = rows.invoice(alice, invoice_pdf=stripe_pdf), rows.invoice(alice)
    await rows.add(engine, alice, with_pdf, without_pdf)
    headers = auth(user_id="alice")

    first = await client.get(f"/api/v1/invoices/{with_pdf.id}/download", headers=headers)
    second = await client.get(f"/api/v1/invoices/{without_pdf.id}/download", headers=headers)

    assert first.json() == {"download_url": stripe_pdf}
    assert second.json() == {"download_url": f"/api/v1/invoices/{without_pdf.id}/pdf"}


async def test_own_pdf_contains_number_total_currency_and_state(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    invoice = rows.invoice(
        alice,
        number="INV-0042",
        subtotal=2900,
        tax=232,
        total=3132,
        amount_due=3132,
        amount_paid=3132,
        paid_at=rows.T0,
        lines=[SUBSCRIPTION_LINE],
    )
    await rows.add(engine, alice, invoice)

    response = await client.get(f"/api/v1/invoices/{invoice.id}/pdf", headers=auth(user_id="alice"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    text = _pdf_text(response.content)
    for expected in (
        "INV-0042",
        "31.32 USD",
        "2.32 USD",
        "29.00 USD",
        "PAID",
        "alice@example.com",
        "Pro plan",
    ):
        assert expected in text, expected


async def test_pdf_formats_zero_decimal_currency_without_cents(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    line = SUBSCRIPTION_LINE | {"unit_amount": "3000", "amount": 3000, "tax": 300, "currency": "jpy"}
    invoice = rows.invoice(
        alice,
        number="INV-JPY-1",
        currency="jpy",
        status="open",
        subtotal=3000,
        tax=300,
        total=3300,
        amount_due=3300,
        amount_paid=0,
        lines=[line],
    )
    await rows.add(engine, alice, invoice)

    response = await client.get(f"/api/v1/invoices/{invoice.id}/pdf", headers=auth(user_id="alice"))

    text = _pdf_text(response.content)
    assert "3,300 JPY" in text
    assert "33.00 JPY" not in text
    assert "UNPAID" in text


def test_amounts_format_in_each_currencys_minor_unit() -> None:
    assert format_amount(123456, "usd") == "1,234.56 USD"
    assert format_amount(123456, "jpy") == "123,456 JPY"
    assert format_amount(123456, "kwd") == "123.456 KWD"
    assert format_unit_price(Decimal("0.15"), "usd") == "0.0015 USD"
    assert format_unit_price(Decimal("2900"), "usd") == "29.00 USD"
    assert format_unit_price(Decimal("5"), "jpy") == "5 JPY"


def test_long_invoice_pdf_spans_pages_and_ends_with_the_totals() -> None:
    from app.invoices.lines import InvoiceLine
    from app.invoices.pdf import InvoiceDocument, Party, render_invoice_pdf

    line = InvoiceLine(
        "Calls \u2014 batch", None, "Metered", None, None, 1000, Decimal("0.15"), 150, 0, "usd"
    )
    document = InvoiceDocument(
        issuer=Party("API Marketplace", ("billing@marketplace.example",)),
        bill_to=Party("alice@example.com", ()),
        number="INV-LONG",
        status="open",
        currency="usd",
        issued_at=rows.T0,
        period_start=None,
        period_end=None,
        paid_at=None,
        lines=(line,) * 40,
        subtotal=6000,
        tax=0,
        total=6000,
        amount_paid=0,
        amount_due=6000,
    )

    pages = PdfReader(io.BytesIO(render_invoice_pdf(document))).pages

    assert len(pages) > 1
    assert "60.00 USD" in pages[-1].extract_text()
    assert "Calls - batch" in pages[0].extract_text()


async def _mirror(
    engine: AsyncEngine, obj: dict[str, Any], issuer: str, *, commit: bool = True
) -> str | None:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        invoice = await sync_invoice(
            session, StripeInvoice.from_payload(obj), observed_at=int(rows.T0.timestamp()), issuer=issuer
        )
        number = invoice.number if invoice is not None else None
        await (session.commit() if commit else session.rollback())
    return number


def _stripe_invoice(customer: str, status: str, number: str | None = None) -> dict[str, Any]:
    return {
        "id": f"in_{uuid.uuid4().hex[:14]}",
        "customer": customer,
        "status": status,
        "number": number,
        "currency": "usd",
        "lines": {"data": []},
    }


async def test_invoices_stripe_left_unnumbered_take_a_gap_free_sequence_per_issuer(
    engine: AsyncEngine,
) -> None:
    alice = rows.consumer("alice")
    await rows.add(engine, alice)
    customer = str(alice.stripe_customer_id)
    assert await _mirror(engine, _stripe_invoice(customer, "draft"), "Acme") is None
    first = _stripe_invoice(customer, "open")
    assert await _mirror(engine, first, "Acme") == "INV-000001"
    assert await _mirror(engine, first | {"status": "paid"}, "Acme") == "INV-000001"  # once per invoice
    # A rolled-back mirror gives its number back: the sequence has no gap.
    assert await _mirror(engine, _stripe_invoice(customer, "paid"), "Acme", commit=False) == "INV-000002"
    assert await _mirror(engine, _stripe_invoice(customer, "paid"), "Acme") == "INV-000002"
    assert await _mirror(engine, _stripe_invoice(customer, "paid", "ABCD-0007"), "Acme") == "ABCD-0007"
    assert await _mirror(engine, _stripe_invoice(customer, "paid"), "Other issuer") == "INV-000001"
    assert await _mirror(engine, _stripe_invoice(customer, "open"), "Acme") == "INV-000003"


async def test_pdf_of_an_open_invoice_shows_bill_to_plan_unit_price_due_date_and_description(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    api_row = rows.api("creator-1")
    plan_row, version = rows.plan(api_row, name="Pro")
    version.stripe_price_id = "price_pro_monthly"
    invoice = rows.invoice(
        alice,
        number="INV-000007",
        status="open",
        amount_paid=0,
        customer_name="Alice Example Ltd",
        customer_address={
            "line1": "5 Harbour Road",
            "postal_code": "D02 X285",
            "city": "Dublin",
            "country": "IE",
        },
        description="Thank you for building with the Weather API",
        due_date=rows.T0 + timedelta(days=30),
        lines=[
            SUBSCRIPTION_LINE
            | {"description": "1 x Pro", "unit_amount": None, "price_id": "price_pro_monthly"}
        ],
    )
    await rows.add(engine, alice, api_row, plan_row, version, invoice)

    response = await client.get(f"/api/v1/invoices/{invoice.id}/pdf", headers=auth(user_id="alice"))

    assert response.status_code == 200
    text = _pdf_text(response.content)
    due = (rows.T0 + timedelta(days=30)).strftime("%d %b %Y")
    for expected in (
        "INV-000007",
        "UNPAID",
        f"Due date{due}",
        "Alice Example Ltd",
        "5 Harbour Road",
        "D02 X285 Dublin",
        "Plan: Pro",
        "29.00 USD",
        "Thank you for building with the Weather API",
    ):
        assert expected in text.replace(" \n", "\n").replace("Due date ", "Due date"), expected
    assert "DRAFT-" not in text


async def test_pdf_of_a_paid_invoice_never_shows_a_draft_number(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    invoice = rows.invoice(alice, number=None, status="paid", paid_at=rows.T0)
    await rows.add(engine, alice, invoice)
    response = await client.get(f"/api/v1/invoices/{invoice.id}/pdf", headers=auth(user_id="alice"))
    assert response.status_code == 200
    assert "DRAFT" not in _pdf_text(response.content)
