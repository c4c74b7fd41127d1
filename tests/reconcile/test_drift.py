"""`billing reconcile` against the Stripe emulator: each kind of drift reported once, none where
our store and Stripe agree, the report stored, the drift exported and the command's exit code."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from app import cli as cli_module
from app import clock, metrics
from app.config import Settings
from app.earnings.booking import book_invoice_earnings
from app.invoices.stripe_sync import sync_invoice
from app.models import Earning, Invoice, ReconcileDrift, Subscription, UsageRecord
from app.plans.service import meter_event_name
from app.reconcile.jobs import publish
from app.reconcile.service import ReconcileService
from app.stripe import StripeGateway
from tests.support.auth import Auth
from tests.support.billing_data import World, event, make_world, subscription_obj
from tests.support.earnings import add_plan, booked, paid_invoice, pay
from tests.support.journeys import add_card, create_plan, new_api_id, register, subscribed_consumer
from tests.support.stripe_payments import PERIOD, T0, FakePayments, refund
from tests.support.worker import Ctx, deliver

DAY = timedelta(days=1)


def _service(engine: AsyncEngine, settings: Settings) -> ReconcileService:
    return ReconcileService(
        engine, async_sessionmaker(engine, expire_on_commit=False), StripeGateway(settings),
        rate_per_second=1000, commission=settings.platform_commission,
    )  # fmt: skip


async def _subscribed(client: httpx.AsyncClient, auth: Auth, plan: dict[str, Any]) -> dict[str, Any]:
    """A new consumer with a card subscribed to `plan` at Stripe: the subscription."""
    _headers, body = await subscribed_consumer(client, auth, plan)
    assert body["stripe_subscription_id"], body
    return body


async def _mirror_latest_invoice(
    engine: AsyncEngine, settings: Settings, stripe_http: httpx.AsyncClient, stripe_subscription_id: str
) -> str:
    """Mirror the subscription's first invoice and book its earnings, as the webhooks do."""
    stripe_sub = (await stripe_http.get(f"/v1/subscriptions/{stripe_subscription_id}")).json()
    latest = stripe_sub["latest_invoice"]
    invoice_id = latest if isinstance(latest, str) else latest["id"]
    obj = await StripeGateway(settings).retrieve_invoice(invoice_id)
    assert obj.status == "paid", obj
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        invoice = await sync_invoice(
            session, obj, observed_at=obj.as_of or 0, issuer=settings.invoice_issuer_name
        )
        assert invoice is not None
        await book_invoice_earnings(session, invoice, settings.platform_commission)
    return invoice_id


async def _drifts(engine: AsyncEngine, run_id: uuid.UUID) -> dict[tuple[str, str], ReconcileDrift]:
    async with AsyncSession(engine) as session:
        rows = (
            await session.execute(select(ReconcileDrift).where(ReconcileDrift.run_id == run_id))
        ).scalars()
        return {(row.check_name, row.subject): row for row in rows}


async def test_reconcile_reports_each_drift_once_and_nothing_where_store_and_stripe_agree(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    settings: Settings,
    stripe_http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), monthly_price="29")
    # A: mirrored and booked as the webhooks do: no drift anywhere.
    agreed = await _subscribed(client, auth, plan)
    agreed_invoice = await _mirror_latest_invoice(
        engine, settings, stripe_http, agreed["stripe_subscription_id"]
    )
    # B: our mirror still shows it open and unpaid, and its creator was never booked.
    stale = await _subscribed(client, auth, plan)
    stale_invoice = await _mirror_latest_invoice(
        engine, settings, stripe_http, stale["stripe_subscription_id"]
    )
    async with engine.begin() as connection:
        await connection.execute(
            update(Invoice)
            .where(Invoice.stripe_invoice_id == stale_invoice)
            .values(status="open", amount_paid=0)
        )
        await connection.execute(
            delete(Earning).where(
                Earning.invoice_id
                == select(Invoice.id).where(Invoice.stripe_invoice_id == stale_invoice).scalar_subquery()
            )
        )
    # C: a Stripe subscription of one of our customers with no row of ours.
    orphan_headers = auth("consumer")
    orphan_customer = (await register(client, orphan_headers))["stripe_customer_id"]
    await add_card(client, orphan_headers)
    stripe_price = (await stripe_http.get(f"/v1/subscriptions/{agreed['stripe_subscription_id']}")).json()
    price_id = stripe_price["items"]["data"][0]["plan"]["id"]
    orphan = (
        await stripe_http.post(
            "/v1/subscriptions", data={"customer": orphan_customer, "items[0][plan]": price_id}
        )
    ).json()
    assert orphan["status"] == "active", orphan
    orphan_invoice = (
        orphan["latest_invoice"]
        if isinstance(orphan["latest_invoice"], str)
        else orphan["latest_invoice"]["id"]
    )
    # E: cancelled at Stripe while our row still says active.
    ended = await _subscribed(client, auth, plan)
    await _mirror_latest_invoice(engine, settings, stripe_http, ended["stripe_subscription_id"])
    assert (
        await stripe_http.delete(f"/v1/subscriptions/{ended['stripe_subscription_id']}")
    ).status_code == 200
    # D: our active row points at a Stripe subscription Stripe never had.
    gone = await _subscribed(
        client, auth, await create_plan(client, creator, new_api_id(), monthly_price="9")
    )
    await _mirror_latest_invoice(engine, settings, stripe_http, gone["stripe_subscription_id"])
    gone_id = f"sub_gone{uuid.uuid4().hex[:12]}"
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == uuid.UUID(gone["id"]))
            .values(stripe_subscription_id=gone_id)
        )
    # Usage: three ended days recorded (100, 200, 300 calls at 1 cent), the last never reached the meter.
    pay_per_use = await create_plan(client, creator, new_api_id(), type="pay_per_use", price_per_call="0.01")
    metered = await _subscribed(client, auth, pay_per_use)
    await _mirror_latest_invoice(engine, settings, stripe_http, metered["stripe_subscription_id"])
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    gateway = StripeGateway(settings)
    customer = (await stripe_http.get(f"/v1/subscriptions/{metered['stripe_subscription_id']}")).json()[
        "customer"
    ]
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == uuid.UUID(metered["id"]))
            .values(current_period_start=today - 5 * DAY, current_period_end=today + 25 * DAY)
        )
        # Its invoice bills the same period: otherwise the period the emulator stamped at subscribe
        # time is a second one to compare as soon as the clock passes the next minute.
        await connection.execute(
            update(Invoice)
            .where(Invoice.subscription_id == uuid.UUID(metered["id"]))
            .values(period_start=today - 5 * DAY, period_end=today + 25 * DAY)
        )
        for back, calls in ((4, 100), (3, 200), (2, 300)):
            start = today - back * DAY
            identifier = f"usage:{metered['id']}:{start:%Y%m%d}"
            await connection.execute(
                insert(UsageRecord).values(
                    id=uuid.uuid4(), subscription_id=uuid.UUID(metered["id"]), window_start=start,
                    window_end=start + DAY, quantity=calls, successful_calls=calls, failed_calls=0,
                    meter_event_identifier=identifier, created_at=today,
                )
            )  # fmt: skip
            if back != 2:
                await gateway.report_meter_event(
                    event_name=meter_event_name(pay_per_use["api_id"]), customer=customer, value=calls,
                    identifier=identifier, timestamp=start + DAY - timedelta(seconds=1),
                    idempotency_key=f"meter-event:{identifier}:1",
                )  # fmt: skip

    service = _service(engine, settings)
    # Run minutes after the data was made, past a minute boundary whatever the machine's speed.
    with clock.use(clock.ManualClock(datetime.now(UTC) + timedelta(minutes=2))):
        run = await service.run()

    assert run.status == "completed"
    found = await _drifts(engine, run.id)
    assert found[("invoices", stale_invoice)].drift_cents == 2900
    assert "status open here, paid at Stripe" in found[("invoices", stale_invoice)].detail
    earnings = found[("earnings", stale_invoice)]
    assert (earnings.ours, earnings.stripe, earnings.drift_cents) == (0, 2320, 2320)
    assert ("invoices", agreed_invoice) not in found
    assert ("earnings", agreed_invoice) not in found
    # The orphan's invoice was never mirrored: missing here, and its creator never booked.
    assert "missing here" in found[("invoices", orphan_invoice)].detail
    assert found[("earnings", orphan_invoice)].drift_cents == 2320
    assert "no row of ours" in found[("orphans", orphan["id"])].detail
    assert "canceled at Stripe" in found[("orphans", ended["stripe_subscription_id"])].detail
    assert "Stripe has no subscription" in found[("orphans", gone_id)].detail
    for agreeing in (agreed, stale, metered):
        assert ("orphans", agreeing["stripe_subscription_id"]) not in found
    usage = [line for (check, _), line in found.items() if check == "usage"]
    assert [(u.ours, u.stripe, u.drift_cents, u.currency) for u in usage] == [(600, 300, 300, "usd")]
    assert usage[0].subject.startswith(metered["id"])

    report = await service.report(run)
    assert report.checked["earnings"] == 6  # the subscription invoices of our customers
    assert report.checked["usage"] == 1
    assert report.totals["invoices"].items == 2
    assert report.totals["earnings"].cents == {"usd": 2 * 2320}
    assert report.totals["usage"].cents == {"usd": 300}

    # Every API replica exports the stored report at scrape time.
    monkeypatch.setattr(metrics, "RECONCILE", metrics.ReconcileDrift(interval_seconds=0))
    scraped = (await client.get("/metrics")).text
    assert 'billing_reconcile_drift_cents{check="usage",currency="usd"} 300.0' in scraped
    assert 'billing_reconcile_drift_items{check="invoices"} 2.0' in scraped
    assert 'billing_reconcile_drift_cents{check="earnings",currency="usd"} 4640.0' in scraped
    publish(report)  # the process that ran it exports the same totals at once
    assert metrics.RECONCILE_DRIFT_ITEMS.labels("earnings")._value.get() == 2


async def test_reconcile_command_prints_a_table_per_check_and_exits_1_on_drift(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    settings: Settings,
    stripe_http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = await _subscribed(client, auth, await create_plan(client, auth("creator"), new_api_id()))
    await stripe_http.delete(f"/v1/subscriptions/{gone['stripe_subscription_id']}")
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)

    # The command runs its own event loop: off this test's loop.
    result = await asyncio.to_thread(
        CliRunner().invoke, cli_module.cli, ["reconcile", "--since", "2026-01-01"]
    )

    assert result.exit_code == 1, result.output
    assert "reconcile completed since 2026-01-01" in result.output
    for check in ("invoices", "earnings", "usage", "orphans"):
        assert check in result.output
    assert gone["stripe_subscription_id"] in result.output


# --- earnings of plan changes and balance-paid invoices, booked as the webhooks book them ----------


@pytest.fixture
def stripe_answers(settings: Settings) -> Iterator[tuple[FakePayments, respx.MockRouter]]:
    """Stripe answered by respx in its documented shapes: the invoices (and their payments) a
    FakePayments holds, listed too, for invoices the emulator cannot issue (proration credits,
    customer balances)."""
    fake = FakePayments()
    with respx.mock(base_url=settings.stripe_api_base, assert_all_called=False) as mock:
        fake.install(mock)
        yield fake, mock


async def _plan_changes_booked(
    client: httpx.AsyncClient, ctx: Ctx, engine: AsyncEngine, fake: FakePayments, mock: respx.MockRouter
) -> PlanChanges:
    """A consumer's month of plan changes paid and refunded through signed webhooks: Pro (1000),
    an always_invoice upgrade to Business, a downgrade to Basic whose credit exceeds its charge,
    and a renewal paid partly from that credit, then partly refunded. Stripe lists the invoices."""
    world = await make_world(engine, status="active", monthly_amount=1000)
    fake.world = world
    business, business_price = await add_plan(engine, world, "Business", 3000)
    basic, basic_price = await add_plan(engine, world, "Basic", 600)
    first = paid_invoice(world, "in_first", [(1000, world.price)])
    # Half-way: -500 unused Pro, +1500 remaining Business: 1000 charged.
    upgrade = paid_invoice(world, "in_up", [(-500, world.price), (1500, business_price)])
    # Then -500 unused Business, +300 remaining Basic: total -200, a 200 credit in the balance.
    downgrade = paid_invoice(world, "in_down", [(-500, business_price), (300, basic_price)])
    # Next month's 600 + 60 tax: 200 from the credit, 460 by card.
    renewal = paid_invoice(world, "in_next", [(600, basic_price)], tax=60, starting_balance=-200)
    assert (upgrade["amount_paid"], downgrade["total"], downgrade["ending_balance"]) == (1000, -200, -200)
    assert (renewal["amount_paid"], renewal["ending_balance"]) == (460, 0)
    for at, invoice in enumerate((first, upgrade, upgrade, downgrade, renewal, downgrade)):
        await pay(client, ctx, fake, invoice, T0 + 10 * at)
    refunded = event("refund.created", refund("in_next", "re_next", 100, "succeeded"), created=T0 + 100)
    assert await deliver(client, ctx, refunded) == "processed"

    newest_first = [renewal, downgrade, upgrade, first]
    mock.get("/v1/invoices").respond(200, json=_stripe_list("/v1/invoices", newest_first))
    mock.get("/v1/subscriptions").respond(
        200, json=_stripe_list("/v1/subscriptions", [subscription_obj(world, "active", period=PERIOD)])
    )
    return PlanChanges(world, business, basic)


@dataclass(frozen=True)
class PlanChanges:
    world: World
    business: uuid.UUID
    basic: uuid.UUID


def _stripe_list(url: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "url": url, "has_more": False, "data": data}


async def test_reconcile_finds_no_earnings_drift_on_upgrade_credit_and_balance_paid_invoices(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
    stripe_answers: tuple[FakePayments, respx.MockRouter],
) -> None:
    changes = await _plan_changes_booked(client, worker_ctx, engine, *stripe_answers)
    ledger = await booked(engine)
    assert ("credit", changes.business, 200, 40, 160) in ledger  # the downgrade's credit line
    assert ("charge", changes.basic, 600, 120, 480) in ledger  # the renewal, card and credit
    assert any(kind == "reversal" for kind, *_ in ledger)

    service = _service(engine, settings)
    run = await service.run()

    assert run.status == "completed"
    assert await _drifts(engine, run.id) == {}
    report = await service.report(run)
    assert (report.checked["invoices"], report.checked["earnings"]) == (4, 4)


async def test_reconcile_reports_a_missing_or_wrong_ledger_line_on_those_invoices(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
    stripe_answers: tuple[FakePayments, respx.MockRouter],
) -> None:
    changes = await _plan_changes_booked(client, worker_ctx, engine, *stripe_answers)

    def of(stripe_invoice_id: str) -> Any:
        return Earning.invoice_id == (
            select(Invoice.id).where(Invoice.stripe_invoice_id == stripe_invoice_id).scalar_subquery()
        )

    async with engine.begin() as connection:
        # The downgrade's credit line lost; the renewal's charge booked 50 too much; the upgrade's
        # charge booked to the old plan (the same creator total, the wrong plan).
        await connection.execute(delete(Earning).where(of("in_down"), Earning.kind == "credit"))
        await connection.execute(
            update(Earning)
            .where(of("in_next"), Earning.kind == "charge")
            .values(net_amount=Earning.net_amount + 50, gross_amount=Earning.gross_amount + 50)
        )
        await connection.execute(
            update(Earning).where(of("in_up"), Earning.kind == "charge").values(plan_id=changes.world.plan_id)
        )

    run = await _service(engine, settings).run()

    found = await _drifts(engine, run.id)
    assert sorted(subject for check, subject in found if check == "earnings") == [
        "in_down",
        "in_next",
        "in_up",
    ]
    assert not [key for key in found if key[0] != "earnings"]
    missing, wrong, misplaced = (
        found[("earnings", "in_down")],
        found[("earnings", "in_next")],
        found[("earnings", "in_up")],
    )
    assert (missing.ours, missing.stripe, missing.drift_cents) == (0, -160, 160)
    assert wrong.drift_cents == 50
    assert (misplaced.ours, misplaced.stripe, misplaced.drift_cents) == (800, 800, 1600)
    assert f"plan {changes.business} 0 here, 800 expected" in misplaced.detail


async def test_reconcile_finds_no_earnings_drift_over_a_random_year_of_plan_changes_and_refunds(
    client: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
    settings: Settings,
    stripe_answers: tuple[FakePayments, respx.MockRouter],
) -> None:
    """Renewals, upgrades, downgrades and mixed invoices with tax, paid by card and from the
    balance, some refunded in part, all booked by the webhooks: Stripe's invoices reconcile."""
    fake, mock = stripe_answers
    world = await make_world(engine, status="active", monthly_amount=1000)
    fake.world = world
    prices = [world.price] + [(await add_plan(engine, world, f"P{i}", 0))[1] for i in range(3)]
    rng = random.Random(20261202)  # noqa: S311  (a fixed seed: the same story each run)
    balance, listed = 0, list[dict[str, Any]]()
    for month in range(12):
        old, new = rng.sample(prices, 2)
        credit = rng.randrange(10, 3000)
        lines = rng.choice(
            [
                [(rng.randrange(100, 5000, 10), new)],
                [(-credit, old), (credit + rng.randrange(0, 3000), new)],
                [(-credit, old), (rng.randrange(0, credit), new)],
                [(rng.randrange(-2000, 2000), rng.choice(prices)) for _ in range(rng.randrange(1, 5))],
            ]
        )
        tax = rng.randrange(0, 400) if sum(a for a, _ in lines) > 0 and rng.random() < 0.5 else 0
        invoice = paid_invoice(world, f"in_y{month}", lines, tax=tax, starting_balance=balance)
        balance = invoice["ending_balance"]
        listed.insert(0, invoice)
        await pay(client, worker_ctx, fake, invoice, T0 + month * 86400)
        if invoice["amount_paid"] > 0 and rng.random() < 0.4:
            amount = rng.randrange(1, invoice["amount_paid"] + 1)
            refunded = refund(invoice["id"], f"re_y{month}", amount, "succeeded")
            await deliver(
                client, worker_ctx, event("refund.created", refunded, created=T0 + month * 86400 + 1)
            )
    mock.get("/v1/invoices").respond(200, json=_stripe_list("/v1/invoices", listed))
    mock.get("/v1/subscriptions").respond(
        200, json=_stripe_list("/v1/subscriptions", [subscription_obj(world, "active", period=PERIOD)])
    )

    run = await _service(engine, settings).run()

    assert run.checked["earnings"] == 12
    assert await _drifts(engine, run.id) == {}
