"""`billing reconcile` against respx answering in Stripe's documented shapes: the wire calls,
the `--since` cut, resuming after a failure, the daily job's once-per-day claim and the lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from typer.testing import CliRunner

from app import cli as cli_module
from app.config import Settings
from app.errors import Conflict, DomainError
from app.models import (
    Api,
    InvoiceReversal,
    JobRun,
    PricingPlan,
    PricingPlanVersion,
    ReconcileDrift,
    ReconcileRun,
    ReconcileSeen,
)
from app.reconcile.jobs import reconcile_with_stripe
from app.reconcile.service import RECONCILE_LOCK_ID, ReconcileService
from app.resources import Resources
from app.stripe import StripeGateway
from tests.support import rows
from tests.support.settings import make_settings

NOW = 1_780_000_000
CUSTOMER = "cus_reconcile_wire"
PRICE = "price_reconcile_wire"


def _line(invoice_id: str, amount: int, *, index: int = 0) -> dict[str, Any]:
    """An invoice line of our plan's price, as API versions since 2025-03-31 answer it."""
    return {
        "id": f"il_{invoice_id}_{index}", "object": "line_item", "amount": amount, "currency": "usd",
        "description": "1 x Pro", "quantity": 1, "period": {"start": NOW, "end": NOW + 30 * 86400},
        "pricing": {"type": "price_details", "price_details": {"price": PRICE, "product": "prod_wire"}},
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {"subscription": "sub_wire_rec"},
        },
    }  # fmt: skip


def _plan(creator_id: str = "creator-wire") -> tuple[Api, PricingPlan, PricingPlanVersion]:
    """The API and plan whose Stripe price the invoices' lines bill."""
    api_row = rows.api(creator_id)
    plan_row, version = rows.plan(api_row)
    version.stripe_price_id = PRICE
    return api_row, plan_row, version


def _invoice(invoice_id: str, *, created: int = NOW, total: int = 2900) -> dict[str, Any]:
    """A paid subscription invoice as API versions since 2025-03-31 answer it."""
    return {
        "id": invoice_id, "object": "invoice", "customer": CUSTOMER, "status": "paid", "currency": "usd",
        "amount_due": total, "amount_paid": total, "amount_remaining": 0, "subtotal": total, "total": total,
        "total_taxes": [], "created": created, "period_start": created, "period_end": created,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_wire_rec"}},
        "status_transitions": {"paid_at": created},
        "lines": {
            "object": "list", "data": [_line(invoice_id, total)], "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    }  # fmt: skip


def _credit_invoice() -> dict[str, Any]:
    """The fields of a paid credit invoice: -500 of unused time, nothing paid, the credit kept in
    the customer's balance."""
    return {
        "total": -500, "subtotal": -500, "amount_due": 0, "amount_paid": 0, "starting_balance": 0,
        "ending_balance": -500,
        "lines": {"object": "list", "data": [_line("in_earned", -500)], "has_more": False},
    }  # fmt: skip


def _pages(mock: respx.MockRouter, pages: dict[str | None, Any]) -> dict[str | None, list[httpx.Request]]:
    """GET /v1/invoices answered per `starting_after` (None: the first page); a list of answers is
    used one per call. Returns the requests each page got."""
    asked: dict[str | None, list[httpx.Request]] = {key: [] for key in pages}

    def answer(request: httpx.Request) -> httpx.Response:
        key = request.url.params.get("starting_after")
        asked[key].append(request)
        found = pages[key]
        if isinstance(found, list):
            found = found[min(len(asked[key]), len(found)) - 1]
        return found if isinstance(found, httpx.Response) else httpx.Response(200, json=found)

    mock.get("/v1/invoices").mock(side_effect=answer)
    return asked


def _list(url: str, data: list[dict[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


@pytest.fixture
def wire_settings(settings: Settings) -> Settings:
    """Our database, Stripe at api.stripe.com (mocked)."""
    return make_settings(database_url=settings.database_url, redis_url=settings.redis_url)


@pytest.fixture
def stripe_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url="https://api.stripe.com", assert_all_called=False) as mock:
        mock.get("/v1/subscriptions").respond(200, json=_list("/v1/subscriptions", []))
        yield mock


def _service(engine: AsyncEngine, settings: Settings) -> ReconcileService:
    return ReconcileService(
        engine, async_sessionmaker(engine, expire_on_commit=False), StripeGateway(settings),
        rate_per_second=1000, commission=settings.platform_commission,
    )  # fmt: skip


async def _our_customer_with_stale_invoices(engine: AsyncEngine, *invoice_ids: str) -> None:
    """Our mirror of each invoice still shows it open and unpaid (its creator not booked)."""
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    invoices = [
        rows.invoice(consumer, stripe_invoice_id=invoice_id, status="open", amount_paid=0, amount_due=2900)
        for invoice_id in invoice_ids
    ]
    await rows.add(engine, consumer, *_plan(), *invoices)


async def _count(engine: AsyncEngine, model: type[Any], *where: Any) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(model).where(*where))).scalar_one()
        )


async def test_meter_usage_asks_for_the_customers_span_and_sums_every_page(
    wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    summary = {
        "object": "billing.meter_event_summary", "livemode": False, "meter": "mtr_wire",
        "start_time": 1711656000, "end_time": 1711659600,
    }  # fmt: skip
    url = "/v1/billing/meters/mtr_wire/event_summaries"
    route = stripe_api.get(url).mock(
        side_effect=[
            httpx.Response(
                200, json=_list(url, [{**summary, "id": "mtrusg_1", "aggregated_value": 10}], has_more=True)
            ),
            httpx.Response(200, json=_list(url, [{**summary, "id": "mtrusg_2", "aggregated_value": 2.5}])),
        ]
    )
    start, end = datetime.fromtimestamp(1711656000, UTC), datetime.fromtimestamp(1711659600, UTC)

    total = await StripeGateway(wire_settings).meter_usage("mtr_wire", customer="cus_9", start=start, end=end)

    assert str(total) == "12.5"
    first, second = (call.request.url.params for call in route.calls)
    assert (first["customer"], first["start_time"], first["end_time"]) == (
        "cus_9",
        "1711656000",
        "1711659600",
    )
    assert "starting_after" not in first
    assert second["starting_after"] == "mtrusg_1"


async def test_subscriptions_are_listed_with_every_status(
    wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    await StripeGateway(wire_settings).list_page("subscriptions", starting_after="sub_1")
    sent = stripe_api.routes[0].calls.last.request.url.params
    assert (sent["status"], sent["starting_after"], sent["limit"]) == ("all", "sub_1", "100")


async def test_invoices_older_than_since_end_the_listing(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    await _our_customer_with_stale_invoices(engine, "in_new", "in_old")
    asked = _pages(
        stripe_api,
        {
            None: _list(
                "/v1/invoices", [_invoice("in_new"), _invoice("in_old", created=NOW - 9000)], has_more=True
            ),
            "in_old": _list("/v1/invoices", []),
        },
    )

    run = await _service(engine, wire_settings).run(since=datetime.fromtimestamp(NOW - 3600, UTC))

    assert len(asked[None]) == 1
    assert asked["in_old"] == []
    assert run.checked["invoices"] == 1
    async with engine.connect() as connection:
        subjects = set((await connection.execute(select(ReconcileDrift.subject))).scalars())
    assert subjects == {"in_new"}


async def test_an_interrupted_run_resumes_after_its_last_page_and_reports_each_drift_once(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    await _our_customer_with_stale_invoices(engine, "in_a", "in_b", "in_c")
    boom = httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}})
    asked = _pages(
        stripe_api,
        {
            None: _list("/v1/invoices", [_invoice("in_a"), _invoice("in_b")], has_more=True),
            "in_b": [boom, _list("/v1/invoices", [_invoice("in_c")])],
        },
    )
    service = _service(engine, wire_settings)

    with pytest.raises(DomainError):
        await service.run()
    async with engine.connect() as connection:
        stopped = (await connection.execute(select(ReconcileRun))).one()
    assert (stopped.status, stopped.cursor["invoices"], stopped.checked["invoices"]) == (
        "interrupted",
        "in_b",
        2,
    )
    assert await _count(engine, ReconcileDrift, ReconcileDrift.check_name == "invoices") == 2
    assert await _count(engine, ReconcileSeen) == 2  # what the listing showed so far, kept to resume

    resumed = await service.run(resume=True)

    assert resumed.id == stopped.id
    assert resumed.status == "completed"
    assert (len(asked[None]), len(asked["in_b"])) == (1, 2)  # the committed page is not asked again
    assert resumed.checked["invoices"] == 3
    assert resumed.checked["earnings"] == 3
    assert await _count(engine, ReconcileDrift, ReconcileDrift.check_name == "invoices") == 3
    assert await _count(engine, ReconcileDrift, ReconcileDrift.check_name == "earnings") == 3
    assert await _count(engine, ReconcileSeen) == 0


async def test_the_daily_job_runs_once_per_day_and_a_retry_resumes_that_days_run(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    await _our_customer_with_stale_invoices(engine, "in_day")
    stripe_api.get("/v1/invoices").mock(
        side_effect=[
            httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}}),
            httpx.Response(
                200,
                json=_list("/v1/invoices", [_invoice("in_day", created=int(datetime.now(UTC).timestamp()))]),
            ),
        ]
    )
    resources = Resources.open(wire_settings, jobs=True)
    ctx: dict[str, Any] = {"resources": resources}
    try:
        with pytest.raises(DomainError):
            await reconcile_with_stripe(ctx)
        retried = await reconcile_with_stripe(ctx)
        again = await reconcile_with_stripe(ctx)
    finally:
        await resources.close()

    assert retried is not None
    assert retried["drift_items"] == {"invoices": 1, "earnings": 1}
    assert again is None
    assert await _count(engine, ReconcileRun) == 1
    assert await _count(engine, JobRun, JobRun.job == "reconcile") == 1
    async with engine.connect() as connection:
        run = (await connection.execute(select(ReconcileRun))).one()
    assert (run.status, run.period, str(run.id)) == (
        "completed",
        datetime.now(UTC).date().isoformat(),
        retried["run_id"],
    )


async def test_a_second_reconcile_while_one_runs_is_refused(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:id)"), {"id": RECONCILE_LOCK_ID})
        try:
            with pytest.raises(Conflict):
                await _service(engine, wire_settings).run()
        finally:
            await holder.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": RECONCILE_LOCK_ID})
    assert await _count(engine, ReconcileRun) == 0


async def test_an_invoice_of_ours_stripe_does_not_have_is_drift_of_its_total(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    await rows.add(
        engine, consumer, rows.invoice(consumer, stripe_invoice_id="in_listed"),
        rows.invoice(consumer, stripe_invoice_id="in_phantom", total=1500, amount_paid=1500),
    )  # fmt: skip
    _pages(stripe_api, {None: _list("/v1/invoices", [_invoice("in_listed")])})
    missing = stripe_api.get("/v1/invoices/in_phantom").respond(
        404,
        json={
            "error": {
                "type": "invalid_request_error", "code": "resource_missing", "param": "id",
                "message": "No such invoice: 'in_phantom'",
            }
        },
    )  # fmt: skip
    listed = stripe_api.get("/v1/invoices/in_listed")

    run = await _service(engine, wire_settings).run()

    assert missing.called
    assert not listed.called
    assert run.checked["invoices"] == 2
    async with engine.connect() as connection:
        drifts = (
            await connection.execute(select(ReconcileDrift).where(ReconcileDrift.check_name == "invoices"))
        ).all()
    assert [(d.subject, d.ours, d.stripe, d.drift_cents) for d in drifts] == [
        ("in_phantom", 1500, None, 1500)
    ]
    assert "Stripe has no such invoice" in drifts[0].detail


@pytest.mark.parametrize(
    ("stripe_fields", "ledger", "refunded", "expected_drift"),
    [
        # Booked on the gross without the commission: the commission drifts.
        ({}, [("charge", 2900, 0)], 0, 580),
        # 1900 of it paid from the customer's credit balance, 1000 by card: all 2900 collected.
        (
            {"amount_paid": 1000, "starting_balance": -1900, "ending_balance": 0},
            [("charge", 2900, 580)], 0, 0,
        ),
        # A credit note took 1900 off before the card paid 1000: only 1000 was collected.
        ({"amount_paid": 1000}, [("charge", 2900, 580)], 0, 2320 - 800),
        # Refunded in full at Stripe, the reversal never booked.
        ({}, [("charge", 2900, 580)], 2900, 2320),
        # Refunded in full and reversed: nothing left, nothing drifts.
        ({}, [("charge", 2900, 580), ("reversal", 2900, 580)], 2900, 0),
        # A credit invoice (a downgrade's unused time): its credit line takes the creator's net back.
        (_credit_invoice(), [("credit", 500, 100)], 0, 0),
        # The same credit invoice with its credit line never booked.
        (_credit_invoice(), [], 0, 400),
        # Booked exactly by the rule.
        ({}, [("charge", 2900, 580)], 0, 0),
    ],
    ids=[
        "no-commission", "balance-paid", "credit-note", "refund-not-reversed", "refund-reversed",
        "credit-booked", "credit-missing", "agrees",
    ],
)  # fmt: skip
async def test_earnings_drift_is_the_ledger_against_the_booking_rule_on_stripes_invoice(
    engine: AsyncEngine,
    wire_settings: Settings,
    stripe_api: respx.MockRouter,
    stripe_fields: dict[str, Any],
    ledger: list[tuple[str, int, int]],
    refunded: int,
    expected_drift: int,
) -> None:
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    api_row, plan_row, version = _plan()
    invoice = rows.invoice(consumer, stripe_invoice_id="in_earned")
    lines = [
        rows.earning(plan_row, invoice, "creator-wire", gross, fee, kind=kind) for kind, gross, fee in ledger
    ]
    reversals = (
        [
            InvoiceReversal(
                invoice_id=invoice.id, stripe_object_id="re_wire", source="refund", status="succeeded",
                amount=refunded, stripe_state_at=NOW, state_rank=1,
            )
        ]
        if refunded
        else []
    )  # fmt: skip
    await rows.add(engine, consumer, api_row, plan_row, version, invoice, *lines, *reversals)
    _pages(stripe_api, {None: _list("/v1/invoices", [{**_invoice("in_earned"), **stripe_fields}])})

    run = await _service(engine, wire_settings).run()

    assert run.checked["earnings"] == 1
    async with engine.connect() as connection:
        drifts = (
            await connection.execute(select(ReconcileDrift).where(ReconcileDrift.check_name == "earnings"))
        ).all()
    assert [d.drift_cents for d in drifts] == ([expected_drift] if expected_drift else [])


async def test_earnings_read_every_line_of_an_invoice_stripe_embeds_in_part(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    api_row, plan_row, version = _plan()
    invoice = rows.invoice(consumer, stripe_invoice_id="in_long", total=3900, amount_paid=3900)
    await rows.add(engine, consumer, api_row, plan_row, version, invoice)
    await rows.add(engine, rows.earning(plan_row, invoice, "creator-wire", 3900, 780))
    listed = _invoice("in_long", total=3900)
    listed["lines"] = {**listed["lines"], "data": [_line("in_long", 2900)], "has_more": True}
    _pages(stripe_api, {None: _list("/v1/invoices", [listed])})
    rest = stripe_api.get("/v1/invoices/in_long/lines").respond(
        200,
        json=_list("/v1/invoices/in_long/lines", [_line("in_long", 1000, index=1)]),
    )

    run = await _service(engine, wire_settings).run()

    assert rest.called
    assert rest.calls.last.request.url.params["starting_after"] == "il_in_long_0"
    assert run.checked["earnings"] == 1
    assert await _count(engine, ReconcileDrift) == 0


async def test_reconcile_command_exits_0_when_store_and_stripe_agree(
    engine: AsyncEngine,
    wire_settings: Settings,
    stripe_api: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    api_row, plan_row, version = _plan()
    invoice = rows.invoice(consumer, stripe_invoice_id="in_fine")
    await rows.add(engine, consumer, api_row, plan_row, version, invoice)
    await rows.add(engine, rows.earning(plan_row, invoice, "creator-wire", 2900, 580))
    _pages(stripe_api, {None: _list("/v1/invoices", [_invoice("in_fine")])})
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: wire_settings)

    # The command runs its own event loop: off this test's loop.
    result = await asyncio.to_thread(CliRunner().invoke, cli_module.cli, ["reconcile"])

    assert result.exit_code == 0, result.output
    assert "reconcile completed" in result.output
    assert "drift" in result.output


async def test_reconcile_keeps_to_the_configured_stripe_rate(
    engine: AsyncEngine, wire_settings: Settings, stripe_api: respx.MockRouter
) -> None:
    consumer = rows.consumer(stripe_customer_id=CUSTOMER)
    await rows.add(engine, consumer, rows.invoice(consumer, stripe_invoice_id="in_unlisted"))
    _pages(stripe_api, {None: _list("/v1/invoices", [])})
    stripe_api.get("/v1/invoices/in_unlisted").respond(200, json=_invoice("in_unlisted"))
    service = ReconcileService(
        engine, async_sessionmaker(engine, expire_on_commit=False), StripeGateway(wire_settings),
        rate_per_second=5, commission=wire_settings.platform_commission,
    )  # fmt: skip

    started = time.monotonic()
    run = await service.run()

    # Three calls (invoices, the unlisted invoice, subscriptions) at 5/s: two intervals at least.
    assert len(stripe_api.calls) == 3
    assert time.monotonic() - started >= 0.39
    assert run.status == "completed"


def test_the_worker_runs_reconcile_once_a_day() -> None:
    from app.worker.settings import WorkerSettings

    daily = [job for job in WorkerSettings.cron_jobs if job.name == "cron:reconcile_with_stripe"]
    assert len(daily) == 1
    assert (len(daily[0].hour), len(daily[0].minute), daily[0].unique) == (1, 1, True)
    assert daily[0].timeout_s is not None
    assert daily[0].timeout_s > WorkerSettings.job_timeout
