"""A Stripe invoice becomes our row through one mirror: the webhook, `billing sync` and the
custom-invoice path store the same JSON as the same row (tax included), on both API-version
shapes, and on every path Stripe's clock, not ours, decides which snapshot is newer."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.models import Invoice
from tests.support import rows
from tests.support.auth import Auth
from tests.support.billing_data import event
from tests.support.custom_invoices import BODY, HOSTED, STRIPE_PDF, FakeStripeInvoices
from tests.support.sync import sync_service
from tests.support.worker import Ctx, deliver

Shape = Callable[[dict[str, Any]], dict[str, Any]]
FINALIZED_AT = 1772323300
# What the row keeps for its own bookkeeping, not from the invoice.
BOOKKEEPING = {"stripe_state_at", "updated_at"}


def pinned_version(invoice: dict[str, Any]) -> dict[str, Any]:
    return invoice


def before_2025_03_31(invoice: dict[str, Any]) -> dict[str, Any]:
    """The same invoice as API versions before 2025-03-31 showed it: `tax` and
    `total_tax_amounts` for `total_taxes`, line prices and `tax_amounts` for `pricing` and `taxes`."""
    old = {key: value for key, value in copy.deepcopy(invoice).items() if key != "total_taxes"}
    taxes = invoice.get("total_taxes") or []
    old["tax"] = sum(tax["amount"] for tax in taxes)
    old["total_tax_amounts"] = [
        {"amount": t["amount"], "inclusive": False, "tax_rate": "txr_1"} for t in taxes
    ]
    old["subscription"] = None
    for line in old["lines"]["data"]:
        pricing = line.pop("pricing")
        line["price"] = {
            "id": "price_adhoc",
            "object": "price",
            "unit_amount_decimal": pricing["unit_amount_decimal"],
        }
        line["tax_amounts"] = [{"amount": t["amount"], "inclusive": False} for t in line.pop("taxes")]
        line["proration"] = False
    return old


@pytest.fixture
def stripe_side(settings: Settings) -> Iterator[tuple[FakeStripeInvoices, respx.MockRouter]]:
    """Stripe's invoice calls for custom invoices, plus its lists for `billing sync`."""
    fake = FakeStripeInvoices(tax_rate=10)
    with respx.mock(base_url=settings.stripe_api_base, assert_all_called=False) as mock:
        fake.install(mock)
        yield fake, mock


def _sent(fake: FakeStripeInvoices, shape: Shape, status: str = "open", **changes: Any) -> dict[str, Any]:
    """The invoice as Stripe answers `send` (open), numbered, with its PDF."""
    finalized = {"number": "MKT-0001", "status_transitions": {"finalized_at": FINALIZED_AT, "paid_at": None}}
    return shape(
        fake.invoice(status, **finalized, invoice_pdf=STRIPE_PDF, hosted_invoice_url=HOSTED, **changes)
    )


def _answer_send_in(mock: respx.MockRouter, fake: FakeStripeInvoices, shape: Shape) -> None:
    for call in ("finalize", "send"):
        mock.post(f"/v1/invoices/{fake.invoice_id}/{call}").mock(
            side_effect=lambda _request: httpx.Response(200, json=_sent(fake, shape))
        )


async def _row(engine: AsyncEngine, stripe_invoice_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id))
        ).one()
    return {key: value for key, value in row._asdict().items() if key not in BOOKKEEPING}


async def _forget(engine: AsyncEngine, stripe_invoice_id: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id))


async def _custom_invoice(client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine) -> None:
    alice = rows.consumer("alice")
    await rows.add(engine, alice)
    created = await client.post(
        "/api/v1/admin/invoices", json={"consumer_id": str(alice.id), **BODY}, headers=auth("admin")
    )
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("shape", [pinned_version, before_2025_03_31])
async def test_webhook_sync_and_custom_invoices_mirror_one_stripe_invoice_as_the_same_row(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    settings: Settings,
    worker_ctx: Ctx,
    stripe_side: tuple[FakeStripeInvoices, respx.MockRouter],
    shape: Shape,
) -> None:
    fake, mock = stripe_side
    _answer_send_in(mock, fake, shape)
    await _custom_invoice(client, auth, engine)
    through_custom = await _row(engine, fake.invoice_id)
    stripe_json = _sent(fake, shape)

    await _forget(engine, fake.invoice_id)
    finalized = event("invoice.finalized", stripe_json, created=FINALIZED_AT + 1)
    assert await deliver(client, worker_ctx, finalized) == "processed"
    through_webhook = await _row(engine, fake.invoice_id)

    await _forget(engine, fake.invoice_id)
    empty = {"object": "list", "data": [], "has_more": False}
    mock.get("/v1/customers").respond(200, json=empty)
    mock.get("/v1/subscriptions").respond(200, json=empty)
    mock.get("/v1/invoices").respond(200, json={**empty, "data": [stripe_json]})
    await sync_service(engine, settings).run()
    through_sync = await _row(engine, fake.invoice_id)

    assert through_custom == through_webhook == through_sync
    # Stripe's tax (10 % of each line), on the invoice and on its lines.
    assert (through_sync["subtotal"], through_sync["tax"]) == (169999, 15000 + 1999)
    assert [line["tax"] for line in through_sync["lines"]] == [15000, 1999]
    assert through_sync["created_at"] == datetime.fromtimestamp(stripe_json["created"], tz=UTC)


async def test_a_custom_invoices_older_snapshot_never_overwrites_a_newer_one_from_a_webhook(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    worker_ctx: Ctx,
    stripe_side: tuple[FakeStripeInvoices, respx.MockRouter],
) -> None:
    fake, mock = stripe_side
    paid_at = FINALIZED_AT + 30
    # Stripe fails the first `send` (a 500 is not replayed for its idempotency key); the retry
    # gets the open invoice, sent before the consumer paid it.
    failed = httpx.Response(500, json={"error": {"type": "api_error", "message": "Try again"}})
    mock.post(f"/v1/invoices/{fake.invoice_id}/send").mock(
        side_effect=[failed, httpx.Response(200, json=_sent(fake, pinned_version))]
    )
    alice = rows.consumer("alice")
    await rows.add(engine, alice)
    body = {"consumer_id": str(alice.id), **BODY}
    headers = {**auth("admin"), "Idempotency-Key": "k1"}
    assert (await client.post("/api/v1/admin/invoices", json=body, headers=headers)).status_code == 502
    # Meanwhile the consumer pays: `invoice.paid` is mirrored before the retry.
    paid = _sent(fake, pinned_version, status="paid", amount_paid=186998)
    paid["status_transitions"] = {"finalized_at": FINALIZED_AT, "paid_at": paid_at}
    assert await deliver(client, worker_ctx, event("invoice.paid", paid, created=paid_at)) == "processed"

    retried = await client.post("/api/v1/admin/invoices", json=body, headers=headers)

    assert retried.status_code == 201, retried.text
    assert (retried.json()["status"], retried.json()["amount_paid"]) == ("paid", 186998)
    row = await _row(engine, fake.invoice_id)
    assert (row["status"], row["amount_paid"]) == ("paid", 186998)
    assert row["paid_at"] == datetime.fromtimestamp(paid_at, tz=UTC)


async def test_a_custom_invoice_mirrored_while_our_clock_runs_ahead_still_takes_stripes_later_events(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    worker_ctx: Ctx,
    stripe_side: tuple[FakeStripeInvoices, respx.MockRouter],
) -> None:
    fake, mock = stripe_side
    _answer_send_in(mock, fake, pinned_version)
    with clock.use(clock.ManualClock(datetime.fromtimestamp(FINALIZED_AT, tz=UTC) + timedelta(days=1))):
        await _custom_invoice(client, auth, engine)
    # Stripe, a minute after finalising, reports the bill-to name the customer has now.
    later = _sent(fake, pinned_version, customer_name="Alice Example GmbH")
    finalized = event("invoice.finalized", later, created=FINALIZED_AT + 60)
    assert await deliver(client, worker_ctx, finalized) == "processed"
    assert (await _row(engine, fake.invoice_id))["customer_name"] == "Alice Example GmbH"
