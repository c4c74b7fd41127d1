"""Stripe events applied by the worker: each type, duplicates, any order, failures, replay."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from arq import Retry
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.models import Consumer, Earning, Invoice, OutboxMessage, StripeEvent, Subscription
from app.money import split_commission
from app.webhooks.jobs import process_stripe_event
from app.webhooks.processor import MAX_ATTEMPTS
from app.webhooks.replay import replay_events
from tests.support.billing_data import World, event, invoice_obj, make_world, subscription_obj
from tests.support.stripe_payments import FakePayments, Payments, dispute, refund
from tests.support.worker import Ctx, deliver, one, post, rows, truncate

DAY = 86400


async def snapshot(engine: AsyncEngine, world: World) -> dict[str, Any]:
    """Everything the lifecycle decides, in terms that do not depend on the run."""
    sub = await one(engine, Subscription, id=world.subscription_id)
    invoices = sorted(
        (i.stripe_invoice_id, i.status, i.amount_due, i.amount_paid, i.tax, i.paid_at, len(i.lines))
        for i in await rows(engine, Invoice)
    )
    stripe_of = {i.id: i.stripe_invoice_id for i in await rows(engine, Invoice)}
    ledger = await rows(engine, Earning)
    earnings = sorted(
        (stripe_of[e.invoice_id], e.gross_amount, e.commission_amount, e.net_amount, e.creator_id)
        for e in ledger
        if e.kind == "charge"
    )
    # Reversal lines are appended as refunds and disputes change, so their number depends on the
    # order; what they take back per invoice does not.
    reversed_: dict[str, list[int]] = {}
    for e in ledger:
        if e.kind != "charge":
            sign = 1 if e.kind == "reversal" else -1
            total = reversed_.setdefault(stripe_of[e.invoice_id], [0, 0, 0])
            for i, amount in enumerate((e.gross_amount, e.commission_amount, e.net_amount)):
                total[i] += sign * amount
    return {
        "subscription": (
            sub.status,
            sub.current_period_start,
            sub.current_period_end,
            sub.cancel_at_period_end,
            sub.cancelled_at,
            sub.api_key_suspended,
            sub.past_due_since is None,
        ),
        "invoices": invoices,
        "earnings": earnings,
        "reversed": sorted((invoice, tuple(amounts)) for invoice, amounts in reversed_.items()),
    }


def lifecycle(world: World, *, t0: int, ending: str) -> list[dict[str, Any]]:
    """Signup, a first paid invoice, a renewal that fails then is paid; optionally cancelled."""
    p1, p2 = (t0, t0 + 30 * DAY), (t0 + 30 * DAY, t0 + 60 * DAY)
    sub = world.stripe_subscription
    events = [
        event("customer.created", {"id": world.customer, "object": "customer", "metadata": {}}, created=t0),
        event(
            "customer.subscription.created", subscription_obj(world, "incomplete", period=p1), created=t0 + 1
        ),
        event("invoice.created", invoice_obj(world, f"in_1{sub}", "draft", period=p1), created=t0 + 2),
        event("invoice.finalized", invoice_obj(world, f"in_1{sub}", "open", period=p1), created=t0 + 3),
        event("payment_intent.succeeded", {"id": f"pi_1{sub}", "object": "payment_intent"}, created=t0 + 4),
        event(
            "invoice.paid",
            invoice_obj(world, f"in_1{sub}", "paid", period=p1, paid_at=t0 + 5),
            created=t0 + 5,
        ),
        event("customer.subscription.updated", subscription_obj(world, "active", period=p1), created=t0 + 6),
        event(
            "invoice.created", invoice_obj(world, f"in_2{sub}", "draft", period=p2, tax=290), created=t0 + 10
        ),
        event(
            "invoice.finalized", invoice_obj(world, f"in_2{sub}", "open", period=p2, tax=290), created=t0 + 11
        ),
        event(
            "invoice.payment_failed",
            invoice_obj(world, f"in_2{sub}", "open", period=p2, tax=290),
            created=t0 + 12,
        ),
        event(
            "payment_intent.payment_failed", {"id": f"pi_2{sub}", "object": "payment_intent"}, created=t0 + 12
        ),
        event(
            "customer.subscription.updated", subscription_obj(world, "past_due", period=p2), created=t0 + 13
        ),
        event(
            "invoice.paid",
            invoice_obj(world, f"in_2{sub}", "paid", period=p2, paid_at=t0 + 20, tax=290),
            created=t0 + 20,
        ),
        event("customer.subscription.updated", subscription_obj(world, "active", period=p2), created=t0 + 21),
    ]
    if ending == "refunded":
        # Part of the first invoice is refunded; the second is disputed and the dispute lost.
        first, second = f"in_1{sub}", f"in_2{sub}"
        events += [
            event("refund.created", refund(first, "re_lc1", 1000, "pending"), created=t0 + 30),
            event("refund.updated", refund(first, "re_lc1", 1000, "succeeded"), created=t0 + 31),
            event(
                "charge.dispute.created", dispute(second, "dp_lc2", 3190, "needs_response"), created=t0 + 32
            ),
            event("charge.dispute.closed", dispute(second, "dp_lc2", 3190, "lost"), created=t0 + 45),
        ]
    if ending == "cancelled":
        events.append(
            event(
                "customer.subscription.deleted",
                subscription_obj(world, "canceled", period=p2, canceled_at=t0 + 40),
                created=t0 + 40,
            )
        )
    return events


async def run_lifecycle(
    client: httpx.AsyncClient,
    ctx: Ctx,
    engine: AsyncEngine,
    ending: str,
    order: random.Random | None,
    payments: FakePayments,
    t0: int = 1_780_000_000,
) -> tuple[dict[str, Any], int]:
    await truncate(engine)
    world = await make_world(engine, key="lifecycle")
    events = lifecycle(world, t0=t0, ending=ending)
    # A refund or dispute seen before its invoice was paid re-fetches the invoice: Stripe's now.
    for payload in events:
        if payload["type"] == "invoice.paid":
            payments.register(payload["data"]["object"])
    if order is not None:
        events = [e for e in events for _ in range(10)]
        order.shuffle(events)
    for payload in events:
        await deliver(client, ctx, payload)
    creates = len(await rows(engine, OutboxMessage, kind="create_api_key"))
    return await snapshot(engine, world), creates


@pytest.mark.parametrize("ending", ["active", "cancelled", "refunded"])
async def test_shuffled_lifecycle_with_duplicates_ends_like_the_in_order_run(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, ending: str, stripe_payments: Payments
) -> None:
    payments, _ = stripe_payments
    expected, creates = await run_lifecycle(client, worker_ctx, engine, ending, order=None, payments=payments)
    assert expected["subscription"][0] == ("active" if ending == "refunded" else ending)
    assert creates == 1
    if ending == "refunded":
        # 1000 of 2900 refunded: 1000 gross, 200 commission; the lost dispute takes all of the second.
        assert expected["reversed"] == [
            ("in_1sub_lifecycle", (1000, 200, 800)),
            ("in_2sub_lifecycle", (2900, 580, 2320)),
        ]
    for seed in range(3):
        got, creates = await run_lifecycle(
            client,
            worker_ctx,
            engine,
            ending,
            order=random.Random(seed),  # noqa: S311
            payments=payments,
        )
        assert got == expected, f"seed {seed}"
        assert creates <= 1


async def test_in_order_lifecycle_mirrors_invoices_and_books_each_paid_invoice_once(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    state, _ = await run_lifecycle(client, worker_ctx, engine, "active", order=None, payments=FakePayments())
    status, period_start, period_end, *_ = state["subscription"]
    assert status == "active"
    assert period_end - period_start == timedelta(days=30)
    assert [(i[0][:4], i[1], i[2], i[3], i[4]) for i in state["invoices"]] == [
        ("in_1", "paid", 2900, 2900, 0),
        ("in_2", "paid", 3190, 3190, 290),
    ]
    # 20% of the pre-tax line: 580 commission, 2320 to the creator, per paid invoice.
    assert [e[1:4] for e in state["earnings"]] == [(2900, 580, 2320), (2900, 580, 2320)]


async def test_every_event_is_processed_once_and_replays_change_nothing(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine)
    events = lifecycle(world, t0=int(time.time()) - 100 * DAY, ending="cancelled")
    for payload in events:
        await deliver(client, worker_ctx, payload)
    statuses = {e.id: e.status for e in await rows(engine, StripeEvent)}
    assert set(statuses.values()) == {"processed", "ignored"}
    assert [e["type"] for e in events if statuses[e["id"]] == "ignored"] == [
        "customer.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
    ]
    before = await snapshot(engine, world)
    outbox_before = len(await rows(engine, OutboxMessage))
    replayed = await replay_events(settings, event_id=None, failed=False, since=None)
    assert replayed.total == len(events)
    assert await snapshot(engine, world) == before
    assert len(await rows(engine, OutboxMessage)) == outbox_before


async def test_customer_created_links_a_consumer_still_missing_its_customer_id(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE consumers SET stripe_customer_id = NULL"))
    customer = {"id": "cus_linked", "object": "customer", "metadata": {"consumer_id": str(world.consumer_id)}}
    assert await deliver(client, worker_ctx, event("customer.created", customer, created=1)) == "processed"
    assert (await one(engine, Consumer, id=world.consumer_id)).stripe_customer_id == "cus_linked"


async def test_unknown_event_type_is_stored_and_ignored(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    payload = event("charge.refund.updated", {"id": "re_1", "object": "refund"}, created=1)
    assert await deliver(client, worker_ctx, payload) == "ignored"
    stored = await one(engine, StripeEvent, id=payload["id"])
    assert (stored.status, stored.attempts) == ("ignored", 1)


async def test_older_subscription_snapshot_never_overwrites_a_newer_one(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    newer = subscription_obj(world, "active", period=(2000, 3000), cancel_at_period_end=True)
    older = subscription_obj(world, "past_due", period=(1000, 2000))
    await deliver(client, worker_ctx, event("customer.subscription.updated", newer, created=2500))
    await deliver(client, worker_ctx, event("customer.subscription.updated", older, created=1500))
    sub = await one(engine, Subscription, id=world.subscription_id)
    assert (sub.status, sub.cancel_at_period_end) == ("active", True)
    assert sub.current_period_end == datetime.fromtimestamp(3000, tz=UTC)


async def test_paid_invoice_never_returns_to_open(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    paid = invoice_obj(world, "in_back", "paid", period=(1, 2), paid_at=50)
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=50))
    late_open = invoice_obj(world, "in_back", "open", period=(1, 2))
    await deliver(client, worker_ctx, event("invoice.finalized", late_open, created=60))
    invoice = await one(engine, Invoice, stripe_invoice_id="in_back")
    assert (invoice.status, invoice.amount_paid) == ("paid", 2900)


async def test_trial_will_end_writes_one_notification(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="trial")
    trial_end = int(time.time()) + 3 * DAY
    obj = subscription_obj(world, "trialing", period=(1, trial_end), trial_end=trial_end)
    for _ in range(2):
        await deliver(client, worker_ctx, event("customer.subscription.trial_will_end", obj, created=5))
    [notice] = await rows(engine, OutboxMessage, kind="notify")
    assert notice.payload["topic"] == "trial_will_end"
    assert notice.payload["trial_end"] == datetime.fromtimestamp(trial_end, tz=UTC).isoformat()
    assert notice.subscription_id == world.subscription_id


async def test_event_for_an_unknown_subscription_retries_with_backoff_then_fails(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine)
    stranger = World(
        **{**world.__dict__, "stripe_subscription": "sub_stranger", "subscription_id": uuid.uuid4()}
    )
    payload = event(
        "customer.subscription.updated", subscription_obj(stranger, "active", period=(1, 2)), created=9
    )
    await post(client, payload)
    with pytest.raises(Retry):
        await process_stripe_event(worker_ctx, payload["id"])
    stored = await one(engine, StripeEvent, id=payload["id"])
    assert (stored.status, stored.attempts) == ("pending", 1)
    assert "sub_stranger" in stored.last_error
    assert await process_stripe_event({**worker_ctx, "job_try": MAX_ATTEMPTS}, payload["id"]) == "failed"
    stored = await one(engine, StripeEvent, id=payload["id"])
    assert (stored.status, stored.attempts) == ("failed", 2)


async def test_replay_of_failed_events_applies_them_once_the_cause_is_gone(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine)
    payload = event(
        "customer.subscription.updated", subscription_obj(world, "active", period=(1, 2)), created=9
    )
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE subscriptions SET stripe_subscription_id = NULL"))
    payload["data"]["object"]["metadata"] = {}
    await post(client, payload)
    assert await process_stripe_event({**worker_ctx, "job_try": MAX_ATTEMPTS}, payload["id"]) == "failed"
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE subscriptions SET stripe_subscription_id = :s"), {"s": world.stripe_subscription}
        )
    result = await replay_events(settings, event_id=None, failed=True, since=None)
    assert (result.total, result.outcomes) == (1, {"processed": 1})
    assert (await one(engine, StripeEvent, id=payload["id"])).status == "processed"
    assert (await one(engine, Subscription, id=world.subscription_id)).status == "active"


async def test_checkout_completion_links_and_activates_the_subscription(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(
        engine, checkout_session="cs_test_checkout1", stripe_subscription="sub_checkout1"
    )
    session = {
        "id": "cs_test_checkout1",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "customer": world.customer,
        "subscription": "sub_checkout1",
        "metadata": {},
    }
    fetched = subscription_obj(world, "active", period=(1_780_000_000, 1_782_592_000))
    with respx.mock(assert_all_called=True) as stripe_mock:
        stripe_mock.get(f"{settings.stripe_api_base}/v1/subscriptions/sub_checkout1").respond(
            200, json=fetched
        )
        for _ in range(2):
            outcome = await deliver(
                client, worker_ctx, event("checkout.session.completed", session, created=9)
            )
            assert outcome == "processed"
    sub = await one(engine, Subscription, id=world.subscription_id)
    assert (sub.status, sub.stripe_subscription_id) == ("active", "sub_checkout1")
    assert sub.current_period_end == datetime.fromtimestamp(1_782_592_000, tz=UTC)
    assert len(await rows(engine, OutboxMessage, kind="create_api_key")) == 1
    # Stripe's own subscription events, older than the fetched state, change nothing now.
    stale = subscription_obj(world, "incomplete", period=(1, 2))
    await deliver(client, worker_ctx, event("customer.subscription.created", stale, created=8))
    assert (await one(engine, Subscription, id=world.subscription_id)).status == "active"


async def test_checkout_of_a_payment_without_subscription_is_ignored(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    session = {"id": "cs_test_pay", "object": "checkout.session", "mode": "payment", "subscription": None}
    assert (
        await deliver(client, worker_ctx, event("checkout.session.completed", session, created=1))
        == "ignored"
    )


async def test_payment_intent_of_an_invoice_refreshes_that_invoice(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, settings: Settings
) -> None:
    world = await make_world(engine, status="active")
    opened = invoice_obj(world, "in_pi", "open", period=(1, 2))
    await deliver(client, worker_ctx, event("invoice.finalized", opened, created=10))
    paid = invoice_obj(world, "in_pi", "paid", period=(1, 2), paid_at=20)
    intent = {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "invoice": "in_pi"}
    with respx.mock(assert_all_called=True) as stripe_mock:
        stripe_mock.get(f"{settings.stripe_api_base}/v1/invoices/in_pi").respond(200, json=paid)
        assert await deliver(client, worker_ctx, event("payment_intent.succeeded", intent, created=20)) == (
            "processed"
        )
    invoice = await one(engine, Invoice, stripe_invoice_id="in_pi")
    assert (invoice.status, invoice.amount_paid) == ("paid", 2900)
    assert len(await rows(engine, Earning)) == 1


def test_commission_is_rounded_half_up_and_net_is_the_rest() -> None:
    assert split_commission(2900, Decimal("0.20")) == (580, 2320)
    assert split_commission(2999, Decimal("0.20")) == (600, 2399)
    assert split_commission(2, Decimal("0.25")) == (1, 1)
    assert split_commission(1, Decimal("0.20")) == (0, 1)


async def test_two_workers_on_the_same_event_apply_it_once(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    world = await make_world(engine, status="active")
    paid = event("invoice.paid", invoice_obj(world, "in_race", "paid", period=(1, 2), paid_at=5), created=5)
    await post(client, paid)
    outcomes = await asyncio.gather(*(process_stripe_event(worker_ctx, paid["id"]) for _ in range(2)))
    assert "processed" in outcomes
    assert set(outcomes) <= {"processed", None}
    assert len(await rows(engine, Earning)) == 1
    assert (await one(engine, StripeEvent, id=paid["id"])).attempts == 1


async def test_processed_events_are_counted_by_type_and_outcome(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine
) -> None:
    def count() -> float:
        labels = {"type": "charge.captured", "outcome": "ignored"}
        return metrics.REGISTRY.get_sample_value("billing_webhook_events_total", labels) or 0.0

    before = count()
    await deliver(client, worker_ctx, event("charge.captured", {"id": "ch_1", "object": "charge"}, created=1))
    assert count() == before + 1


async def test_an_invoice_mirrored_from_stripe_shows_its_lines_tax_and_pdf_to_its_consumer(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx, auth: Any
) -> None:
    world = await make_world(engine)
    t0 = int(time.time()) - DAY
    paid = invoice_obj(
        world, f"in_v{world.stripe_subscription}", "paid", period=(t0, t0 + 30 * DAY), paid_at=t0
    )
    line = paid["lines"]["data"][0]
    line["taxes"] = [{"amount": 290, "tax_behavior": "exclusive"}]
    line["pricing"]["unit_amount_decimal"] = "2900"
    paid["total_taxes"] = [{"amount": 290}]
    paid["invoice_pdf"] = None
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=t0 + 5))

    async with engine.connect() as connection:
        user_id = (
            await connection.execute(select(Consumer.user_id).filter_by(id=world.consumer_id))
        ).scalar_one()
        invoice_id = (await connection.execute(select(Invoice.id))).scalar_one()
    headers = auth("consumer", user_id=user_id)
    detail = (await client.get(f"/api/v1/invoices/{invoice_id}", headers=headers)).json()
    assert detail["lines"][0]["tax"] == 290
    assert detail["lines"][0]["amount"] == 2900
    assert Decimal(str(detail["lines"][0]["unit_amount"])) == Decimal(2900)
    download = (await client.get(f"/api/v1/invoices/{invoice_id}/download", headers=headers)).json()
    pdf = await client.get(download["download_url"], headers=headers)
    assert pdf.headers["content-type"] == "application/pdf"


async def test_an_invoice_we_created_keeps_our_id_when_its_event_arrives_first(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx
) -> None:
    world = await make_world(engine)
    t0 = int(time.time())
    ours = uuid.uuid4()
    draft = invoice_obj(world, f"in_c{world.stripe_subscription}", "draft", period=(t0, t0))
    draft["metadata"] = {"invoice_id": str(ours), "kind": "custom"}
    await deliver(client, worker_ctx, event("invoice.created", draft, created=t0))
    stored = await one(engine, Invoice, stripe_invoice_id=draft["id"])
    assert stored.id == ours


async def test_late_events_of_a_stripe_subscription_left_by_a_downgrade_do_not_touch_the_row(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx
) -> None:
    world = await make_world(engine)
    t0 = int(time.time())
    # Downgraded to a free plan: our row runs on without the Stripe subscription it detached.
    async with engine.begin() as connection:
        await connection.execute(
            update(Subscription)
            .where(Subscription.id == world.subscription_id)
            .values(status="active", stripe_subscription_id=None, stripe_state_at=None)
        )
    deleted = subscription_obj(world, "canceled", period=(t0, t0 + 30 * DAY))
    outcome = await deliver(
        client, worker_ctx, event("customer.subscription.deleted", deleted, created=t0 + 5)
    )
    assert outcome == "ignored"
    row = await one(engine, Subscription, id=world.subscription_id)
    assert (row.status, row.stripe_subscription_id) == ("active", None)
    assert (
        await rows(engine, OutboxMessage, subscription_id=world.subscription_id, kind="revoke_api_key") == []
    )


async def test_an_invoice_with_more_lines_than_stripe_embeds_is_stored_whole(
    client: httpx.AsyncClient, engine: AsyncEngine, worker_ctx: Ctx, settings: Settings
) -> None:
    world = await make_world(engine)
    t0 = int(time.time()) - DAY
    paid = invoice_obj(
        world, f"in_m{world.stripe_subscription}", "paid", period=(t0, t0 + 30 * DAY), paid_at=t0
    )
    template = paid["lines"]["data"][0]
    lines = [template | {"id": f"il_{n}", "amount": 100} for n in range(12)]
    paid["lines"] = {"object": "list", "data": lines[:10], "has_more": True, "total_count": 12}
    paid["amount_paid"] = paid["amount_due"] = paid["subtotal"] = paid["total"] = 1200
    rest = {
        "object": "list",
        "data": lines[10:],
        "has_more": False,
        "url": f"/v1/invoices/{paid['id']}/lines",
    }
    with respx.mock(assert_all_called=False) as stripe:
        more = stripe.route(host="127.0.0.1", path=f"/v1/invoices/{paid['id']}/lines").mock(
            return_value=httpx.Response(200, json=rest)
        )
        stripe.route(host="127.0.0.1").pass_through()
        await deliver(client, worker_ctx, event("invoice.paid", paid, created=t0 + 5))
    assert more.call_count == 1
    stored = await one(engine, Invoice, stripe_invoice_id=paid["id"])
    assert len(stored.lines) == 12
    earning = await one(engine, Earning, invoice_id=stored.id)
    assert earning.gross_amount == 1200
