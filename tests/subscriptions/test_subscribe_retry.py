"""A subscribe retried after a failure between Stripe's answer and our commit never charges twice,
and `billing sync` finds (and with --repair refunds and cancels) Stripe subscriptions we lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from app import cli as cli_module
from app import clock
from app.config import Settings
from app.models import Earning, Invoice, Subscription
from app.stripe.test_clocks import TestClockTime
from tests.support.auth import Auth
from tests.support.billing_data import World, invoice_obj, make_world, subscription_obj
from tests.support.journeys import (
    add_card,
    create_plan,
    new_api_id,
    register,
    registered_consumer,
    stripe_customer_with_card,
    subscribe,
)
from tests.support.settings import make_settings
from tests.support.stripe_payments import PERIOD, T0, refund
from tests.support.stripe_wire import consumer_with_card
from tests.support.sync import sync_service
from tests.support.worker import Ctx, deliver


@contextmanager
def commit_fails_once_after_stripe_answered(
    session_event: Literal["before_commit", "after_commit"],
) -> Iterator[None]:
    """The next commit of a session that wrote a subscription Stripe created raises, at
    `session_event`: `before_commit`, the commit is not made (the database went away between
    Stripe's answer and our commit); `after_commit`, it is made but the caller sees it fail (the
    database's reply to our COMMIT never arrived)."""
    failed = False

    def note_stripe_answer(session: Session, _context: object) -> None:
        changed = session.new | session.dirty
        if any(isinstance(obj, Subscription) and obj.stripe_subscription_id for obj in changed):
            session.info["stripe_answered"] = True

    def fail(session: Session) -> None:
        nonlocal failed
        if session.info.pop("stripe_answered", False) and not failed:
            failed = True
            raise OperationalError("COMMIT", {}, ConnectionResetError(f"{session_event} failed (injected)"))

    event.listen(Session, "after_flush", note_stripe_answer)
    event.listen(Session, session_event, fail)
    try:
        yield
    finally:
        event.remove(Session, session_event, fail)
        event.remove(Session, "after_flush", note_stripe_answer)
    assert failed, f"no commit failed at {session_event}"


async def _stripe_subscriptions(stripe_http: httpx.AsyncClient, customer: str) -> list[dict[str, Any]]:
    listed = await stripe_http.get("/v1/subscriptions", params={"customer": customer, "status": "all"})
    assert listed.status_code == 200, listed.text
    return [s for s in listed.json()["data"] if s["customer"] == customer]


async def _rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(Subscription))).scalar_one())


@pytest.mark.parametrize("idempotency_key", [None, "subscribe-attempt-1"], ids=["no_key", "same_key"])
async def test_a_subscribe_retried_after_its_commit_failed_creates_one_stripe_subscription(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_http: httpx.AsyncClient,
    engine: AsyncEngine,
    idempotency_key: str | None,
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, customer = await stripe_customer_with_card(client, auth)
    if idempotency_key is not None:
        headers = {**headers, "Idempotency-Key": idempotency_key}

    with commit_fails_once_after_stripe_answered("before_commit"):
        failed = await subscribe(client, headers, plan)
    assert failed.status_code == 503, failed.text  # the lost connection: try again
    assert await _rows(engine) == 0
    assert len(await _stripe_subscriptions(stripe_http, customer)) == 1

    retried = await subscribe(client, headers, plan)
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "active"
    [only] = await _stripe_subscriptions(stripe_http, customer)
    assert only["id"] == retried.json()["stripe_subscription_id"]
    assert await _rows(engine) == 1


async def _events_of(stripe_http: httpx.AsyncClient, object_id: str) -> list[dict[str, Any]]:
    """The emulator's events about `object_id`, oldest first."""
    listed = (await stripe_http.get("/v1/events", params={"limit": 100})).json()["data"]
    return [e for e in reversed(listed) if e["data"]["object"].get("id") == object_id]


async def test_every_earnings_line_of_a_subscriptions_invoice_names_that_subscription(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_http: httpx.AsyncClient,
    worker_ctx: Ctx,
    engine: AsyncEngine,
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, customer = await stripe_customer_with_card(client, auth)
    # On a test clock the emulator sends the first invoice's `invoice.paid`, as Stripe does.
    made = await stripe_http.post(
        "/v1/test_helpers/test_clocks", data={"frozen_time": int(time.time()), "customer": customer}
    )
    assert made.status_code == 200, made.text
    with commit_fails_once_after_stripe_answered("before_commit"):
        assert (await subscribe(client, headers, plan)).status_code == 503
    [stripe_subscription] = await _stripe_subscriptions(stripe_http, customer)
    latest = stripe_subscription["latest_invoice"]
    invoice_id = latest if isinstance(latest, str) else latest["id"]
    # Stripe's invoice events arrive before the client's retry: no row of ours follows the
    # Stripe subscription yet, and the paid invoice books its earnings all the same.
    invoice_events = await _events_of(stripe_http, invoice_id)
    assert "invoice.paid" in [e["type"] for e in invoice_events]
    for sent in invoice_events:
        await deliver(client, worker_ctx, sent)

    retried = await subscribe(client, headers, plan)
    assert retried.status_code == 201, retried.text
    ours = retried.json()["id"]
    assert await _subscriptions_named(engine) == ([ours], [("charge", ours)])

    for sent in invoice_events:  # repeats after the retry adopted the subscription change nothing
        await deliver(client, worker_ctx, {**sent, "id": f"{sent['id']}_again"})
    assert await _subscriptions_named(engine) == ([ours], [("charge", ours)])


async def _subscriptions_named(engine: AsyncEngine) -> tuple[list[str], list[tuple[str, str]]]:
    """The subscription each invoice names, and (kind, subscription) of each earnings line."""
    async with engine.connect() as connection:
        invoices = (await connection.execute(select(Invoice.subscription_id))).scalars().all()
        lines = (await connection.execute(select(Earning.kind, Earning.subscription_id))).all()
    return [str(s) for s in invoices], [(kind, str(s)) for kind, s in lines]


async def test_subscribing_again_after_a_cancellation_is_a_new_stripe_subscription(
    client: httpx.AsyncClient, auth: Auth, stripe_http: httpx.AsyncClient
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, customer = await stripe_customer_with_card(client, auth)
    first = (await subscribe(client, headers, plan)).json()
    cancelled = await client.put(
        f"/api/v1/subscriptions/{first['id']}/cancel", json={"immediately": True}, headers=headers
    )
    assert cancelled.json()["status"] == "cancelled"
    second = await subscribe(client, headers, plan)
    assert second.status_code == 201, second.text
    assert (second.json()["id"], second.json()["stripe_subscription_id"]) != (
        first["id"],
        first["stripe_subscription_id"],
    )
    assert len(await _stripe_subscriptions(stripe_http, customer)) == 2


async def test_sync_reports_the_stripe_subscription_of_a_subscribe_that_was_never_retried(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_http: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers, customer = await stripe_customer_with_card(client, auth)
    with commit_fails_once_after_stripe_answered("before_commit"):
        assert (await subscribe(client, headers, plan)).status_code == 503
    [orphan] = await _stripe_subscriptions(stripe_http, customer)

    # Within the first hour it may still be a request in flight: left alone.
    soon = await sync_service(engine, settings).run()
    assert soon.report["subscriptions"]["orphans"] == 0
    assert any(orphan["id"] in d and "left alone" in d for d in soon.report["subscriptions"]["differences"])

    with clock.use(clock.ManualClock(datetime.now(UTC) + timedelta(hours=2))):
        run = await sync_service(engine, settings).run()
    report = run.report["subscriptions"]
    assert report["orphans"] == 1
    assert any(orphan["id"] in d and "orphan" in d for d in report["differences"])
    # Reported only: nothing is cancelled without --repair.
    [still] = await _stripe_subscriptions(stripe_http, customer)
    assert still["status"] == "active"


class OrphanStripe:
    """Stripe (respx, in its documented shapes) holding, for a customer of ours, our row's own
    subscription and an orphan that collected one invoice; refunds and cancellations it records."""

    def __init__(self, world: World) -> None:
        self.world = world
        own = {**subscription_obj(world, "active", period=PERIOD), "created": T0}
        orphan = {**subscription_obj(world, "active", period=PERIOD), "id": "sub_orphan", "metadata": {}}
        stranger = {**orphan, "id": "sub_stranger", "customer": "cus_not_ours"}
        self.subscriptions: dict[str, dict[str, Any]] = {s["id"]: s for s in (own, orphan, stranger)}
        self.refunds: list[dict[str, Any]] = []
        self.cancel_failures = 0

    def install(self, mock: respx.MockRouter) -> dict[str, respx.Route]:
        empty = {"object": "list", "has_more": False, "data": []}

        def listing(data: list[dict[str, Any]], url: str) -> httpx.Response:
            return httpx.Response(200, json={"object": "list", "url": url, "has_more": False, "data": data})

        def invoices(request: httpx.Request) -> httpx.Response:
            if request.url.params.get("subscription") != "sub_orphan":
                return listing([], "/v1/invoices")  # sync's own invoice list: nothing to mirror here
            assert request.url.params["status"] == "paid"
            paid = invoice_obj(self.world, "in_orphan", "paid", period=PERIOD, paid_at=T0 + 5)
            return listing([paid], "/v1/invoices")

        def invoice_payments(request: httpx.Request) -> httpx.Response:
            assert request.url.params["invoice"] == "in_orphan"
            payment = {
                "id": "inpay_orphan", "object": "invoice_payment", "amount_paid": 2900,
                "amount_requested": 2900, "currency": "usd", "invoice": "in_orphan", "is_default": True,
                "livemode": False, "payment": {"type": "payment_intent", "payment_intent": "pi_orphan"},
                "status": "paid", "status_transitions": {"canceled_at": None, "paid_at": T0 + 5},
            }  # fmt: skip
            return listing([payment], "/v1/invoice_payments")

        def create_refund(request: httpx.Request) -> httpx.Response:
            sent = parse_qs(request.content.decode())
            made = {
                **refund("in_orphan", f"re_orphan_{len(self.refunds)}", int(sent["amount"][0]), "succeeded"),
                "reason": sent["reason"][0],
                "payment_intent": sent["payment_intent"][0],
            }
            self.refunds.append(made)
            return httpx.Response(200, json=made)

        def cancel(request: httpx.Request, subscription_id: str) -> httpx.Response:
            if self.cancel_failures:
                self.cancel_failures -= 1
                return httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}})
            canceled = {**self.subscriptions[subscription_id], "status": "canceled", "canceled_at": T0 + 9}
            self.subscriptions[subscription_id] = canceled
            return httpx.Response(200, json=canceled)

        return {
            "customers": mock.get("/v1/customers").respond(200, json=empty),
            "subscriptions": mock.get("/v1/subscriptions").mock(
                side_effect=lambda request: listing(list(self.subscriptions.values()), "/v1/subscriptions")
            ),
            "invoices": mock.get("/v1/invoices").mock(side_effect=invoices),
            "invoice_payments": mock.get("/v1/invoice_payments").mock(side_effect=invoice_payments),
            "refunds": mock.get("/v1/refunds").mock(
                side_effect=lambda request: listing(
                    [r for r in self.refunds if r["payment_intent"] == request.url.params["payment_intent"]],
                    "/v1/refunds",
                )
            ),
            "refund": mock.post("/v1/refunds").mock(side_effect=create_refund),
            "cancel": mock.delete(path__regex=r"^/v1/subscriptions/(?P<subscription_id>sub_\w+)$").mock(
                side_effect=cancel
            ),
        }


def _sync_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    return CliRunner().invoke(cli_module.cli, ["sync", *args])


@pytest.fixture
def wired_settings(settings: Settings) -> Settings:
    """Our database and Redis, Stripe at api.stripe.com (answered by respx)."""
    return make_settings(database_url=settings.database_url, redis_url=settings.redis_url)


def _seed(settings: Settings) -> World:
    async def seed() -> World:
        engine = create_async_engine(settings.database_url)
        try:
            return await make_world(engine, status="active", key="orphans")
        finally:
            await engine.dispose()

    return asyncio.run(seed())


def test_sync_repair_refunds_what_an_orphan_collected_and_cancels_it_once(
    wired_settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe = OrphanStripe(_seed(wired_settings))
    with respx.mock(base_url="https://api.stripe.com", assert_all_called=False) as mock:
        routes = stripe.install(mock)
        reported = _sync_cli(wired_settings, monkeypatch)
        assert reported.exit_code == 0, reported.output
        assert "sub_orphan: orphan" in reported.output
        assert "--repair" in reported.output
        assert not routes["refund"].called
        assert not routes["cancel"].called

        # The first repair dies when Stripe fails the cancellation, after the refund went through.
        stripe.cancel_failures = 1
        interrupted = _sync_cli(wired_settings, monkeypatch, "--repair")
        assert interrupted.exit_code == 1, interrupted.output
        assert len(stripe.refunds) == 1
        repaired = _sync_cli(wired_settings, monkeypatch, "--repair")
        assert repaired.exit_code == 0, repaired.output
        assert "sub_orphan: orphan cancelled, refunded 2900 usd" not in repaired.output  # refunded before
        assert "sub_orphan: orphan cancelled, refunded nothing" in repaired.output
        again = _sync_cli(wired_settings, monkeypatch, "--repair")
        assert again.exit_code == 0, again.output

    # One refund of everything the orphan collected, by its PaymentIntent, with a stable key.
    assert [(r["payment_intent"], r["amount"], r["reason"]) for r in stripe.refunds] == [
        ("pi_orphan", 2900, "duplicate")
    ]
    [refund_call] = routes["refund"].calls
    assert refund_call.request.headers["Idempotency-Key"] == "orphan-refund:pi_orphan:2900"
    cancels = routes["cancel"].calls
    assert [c.request.url.path for c in cancels] == ["/v1/subscriptions/sub_orphan"] * 2
    assert {c.request.headers["Idempotency-Key"] for c in cancels} == {"orphan-cancel:sub_orphan"}
    assert parse_qs(cancels.last.request.url.query.decode()) == {
        "invoice_now": ["false"],
        "prorate": ["false"],
    }
    assert stripe.subscriptions["sub_orphan"]["status"] == "canceled"
    # Neither our row's own subscription nor another customer's was touched.
    assert stripe.subscriptions[stripe.world.stripe_subscription]["status"] == "active"
    assert stripe.subscriptions["sub_stranger"]["status"] == "active"


def test_sync_repair_with_dry_run_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _sync_cli(settings, monkeypatch, "--dry-run", "--repair")
    assert result.exit_code == 2
    assert "--dry-run" in result.output


async def test_a_retry_whose_details_differ_from_what_stripe_answered_is_409_not_502(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    engine: AsyncEngine,
) -> None:
    stripe_api.post("/v1/subscriptions").respond(
        400,
        json={
            "error": {
                "type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same parameters they were "
                "first used with. Try using a key other than 'sub-create:x' if you meant to execute a "
                "different request.",
            }
        },
    )
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "stripe_idempotency_conflict"
    assert await _rows(engine) == 0


@pytest.mark.parametrize("idempotency_key", [None, "upgrade-attempt-1"], ids=["no_key", "same_key"])
async def test_an_upgrade_retried_after_its_commit_failed_answers_the_subscription_and_charges_once(
    client: httpx.AsyncClient,
    auth: Auth,
    stripe_http: httpx.AsyncClient,
    worker_ctx: Ctx,
    settings: Settings,
    idempotency_key: str | None,
) -> None:
    creator, api_id = auth("creator"), new_api_id()
    basic = await create_plan(client, creator, api_id, name="Basic", monthly_price="10")
    pro = await create_plan(client, creator, api_id, name="Pro", monthly_price="30")
    headers = auth("consumer")
    customer = (await register(client, headers))["stripe_customer_id"]
    made = await stripe_http.post(
        "/v1/test_helpers/test_clocks", data={"frozen_time": int(time.time()), "customer": customer}
    )
    assert made.status_code == 200, made.text
    await add_card(client, headers)
    subscribed = (await subscribe(client, headers, basic)).json()
    # A day into the period: the change's snapshot is newer than the subscribe's.
    clock_id = made.json()["id"]
    advanced = await stripe_http.post(
        f"/v1/test_helpers/test_clocks/{clock_id}/advance",
        data={"frozen_time": int(made.json()["frozen_time"]) + 86400},
    )
    assert advanced.status_code == 200, advanced.text
    for _ in range(500):
        if (await stripe_http.get(f"/v1/test_helpers/test_clocks/{clock_id}")).json()["status"] == "ready":
            break
        await asyncio.sleep(0.02)
    if idempotency_key is not None:
        headers = {**headers, "Idempotency-Key": idempotency_key}
    url = f"/api/v1/subscriptions/{subscribed['id']}/upgrade"
    body = {"new_pricing_plan_id": pro["id"]}

    with clock.use(TestClockTime(settings, clock_id, refresh_seconds=0)):
        with commit_fails_once_after_stripe_answered("before_commit"):
            failed = await client.put(url, json=body, headers=headers)
        assert failed.status_code == 503, failed.text
        # Stripe made the change; its webhook moves our row before the client tries again.
        changed = await _newest_event(stripe_http, "customer.subscription.updated")
        assert changed["data"]["object"]["id"] == subscribed["stripe_subscription_id"]
        await deliver(client, worker_ctx, changed)
        charges_before = await _charges(stripe_http, customer)

        retried = await client.put(url, json=body, headers=headers)

    assert retried.status_code == 200, retried.text
    assert (retried.json()["id"], retried.json()["pricing_plan_id"]) == (subscribed["id"], pro["id"])
    assert await _charges(stripe_http, customer) == charges_before
    # One proration charge for the change: the first payment and the upgrade, nothing twice.
    assert len(charges_before) == 2
    [only] = await _stripe_subscriptions(stripe_http, customer)
    assert only["items"]["data"][0]["plan"]["amount"] == 3000


async def _newest_event(stripe_http: httpx.AsyncClient, kind: str) -> dict[str, Any]:
    listed = (await stripe_http.get("/v1/events", params={"limit": 20})).json()["data"]
    return next(e for e in listed if e["type"] == kind)


async def _charges(stripe_http: httpx.AsyncClient, customer: str) -> list[tuple[str, int]]:
    listed = (await stripe_http.get("/v1/charges", params={"customer": customer, "limit": 100})).json()
    return sorted((c["id"], int(c["amount"])) for c in listed["data"] if c["paid"])


async def test_a_subscribe_retried_after_its_commit_answer_was_lost_answers_the_subscription_it_made(
    client: httpx.AsyncClient, auth: Auth, stripe_http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    creator, api_id = auth("creator"), new_api_id()
    plan = await create_plan(client, creator, api_id, name="Basic", monthly_price="10")
    other = await create_plan(client, creator, api_id, name="Pro", monthly_price="30")
    headers, customer = await stripe_customer_with_card(client, auth)
    keyed = {**headers, "Idempotency-Key": "subscribe-once"}

    with commit_fails_once_after_stripe_answered("after_commit"):
        failed = await subscribe(client, keyed, plan)
    assert failed.status_code == 503, failed.text  # the caller cannot tell: it tries again
    assert await _rows(engine) == 1

    retried = await subscribe(client, keyed, plan)
    assert retried.status_code == 201, retried.text
    [only] = await _stripe_subscriptions(stripe_http, customer)
    assert retried.json()["stripe_subscription_id"] == only["id"]
    assert await _rows(engine) == 1
    # Any other subscribe to the API is still refused: without the key, with another key, or
    # the same key asking for another plan.
    for again in (
        await subscribe(client, headers, plan),
        await subscribe(client, {**headers, "Idempotency-Key": "another"}, plan),
        await subscribe(client, {**headers, "Idempotency-Key": "subscribe-once"}, other),
    ):
        assert again.status_code in (409, 422), again.text
        assert again.json()["code"] in ("already_subscribed", "idempotency_key_reused")
    assert await _rows(engine) == 1


async def test_an_incomplete_subscribe_retried_after_its_commit_answer_was_lost_answers_its_client_secret(
    client: httpx.AsyncClient, auth: Auth, stripe_http: httpx.AsyncClient
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id())
    keyed = {**await registered_consumer(client, auth), "Idempotency-Key": "subscribe-sca"}
    needs_authentication = {"payment_method_id": "pm_card_authenticationRequired"}

    with commit_fails_once_after_stripe_answered("after_commit"):
        failed = await subscribe(client, keyed, plan, **needs_authentication)
    assert failed.status_code == 503, failed.text

    retried = await subscribe(client, keyed, plan, **needs_authentication)
    assert retried.status_code == 201, retried.text
    body = retried.json()
    assert body["status"] == "incomplete"
    # The secret of the PaymentIntent the consumer still has to confirm, as the first answer had it.
    stripe_subscription = (
        await stripe_http.get(f"/v1/subscriptions/{body['stripe_subscription_id']}")
    ).json()
    invoice = (await stripe_http.get(f"/v1/invoices/{stripe_subscription['latest_invoice']}")).json()
    intent = (await stripe_http.get(f"/v1/payment_intents/{invoice['payment_intent']}")).json()
    assert body["client_secret"] == intent["client_secret"]
    assert body["client_secret"]
