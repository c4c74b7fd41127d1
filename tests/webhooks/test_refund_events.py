"""Refund and dispute events reverse (and reinstate) creator earnings: once, in any order."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import Earning, Invoice, InvoiceReversal
from app.webhooks.jobs import process_stripe_event
from tests.support.auth import Auth
from tests.support.billing_data import event, make_world
from tests.support.journeys import add_card, create_plan, new_api_id, register, subscribe
from tests.support.stripe_payments import T0, FakePayments, Payments, dispute, refund
from tests.support.worker import Ctx, deliver, one, post, truncate


def _id(value: Any) -> str:
    return str(value["id"] if isinstance(value, dict) else value)


async def ledger(engine: AsyncEngine) -> dict[str, tuple[int, int, int]]:
    """Per kind, the sum of (gross, commission, net) of all lines."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(Earning.kind, Earning.gross_amount, Earning.commission_amount, Earning.net_amount)
        )
        sums: dict[str, tuple[int, int, int]] = {}
        for kind, g, c, n in result:
            before = sums.get(kind, (0, 0, 0))
            sums[kind] = (before[0] + g, before[1] + c, before[2] + n)
        return sums


async def taken_back(engine: AsyncEngine) -> tuple[int, int, int]:
    """What the reversal lines take back in all, reinstatements subtracted."""
    sums = await ledger(engine)
    reversed_, back = sums.get("reversal", (0, 0, 0)), sums.get("reinstatement", (0, 0, 0))
    return (reversed_[0] - back[0], reversed_[1] - back[1], reversed_[2] - back[2])


@dataclass
class Paid:
    """Invoice in_a1 of an active subscription, paid and booked; events are delivered through our
    webhook endpoint and worker."""

    client: httpx.AsyncClient
    ctx: Ctx
    payments: Payments

    async def deliver(self, payload: dict[str, Any]) -> str | None:
        return await deliver(self.client, self.ctx, payload)

    async def send(self, kind: str, obj: dict[str, Any], at: int) -> str | None:
        """Deliver a `kind` event of `obj` that Stripe stamped `at`."""
        return await self.deliver(event(kind, obj, created=at))


@pytest.fixture
async def paid(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> Paid:
    world = await make_world(engine, status="active")
    fake, _ = stripe_payments
    fake.world = world
    await deliver(client, worker_ctx, event("invoice.paid", fake.paid("in_a1"), created=T0 + 5))
    return Paid(client, worker_ctx, stripe_payments)


async def test_a_refund_reverses_the_creators_share_once_whatever_the_repeats(
    paid: Paid, engine: AsyncEngine
) -> None:
    created = event("refund.created", refund("in_a1", "re_1", 1000, "pending"), created=T0 + 100)
    succeeded = event("refund.updated", refund("in_a1", "re_1", 1000, "succeeded"), created=T0 + 101)

    for _ in range(10):
        assert await paid.deliver(created) == "processed"
        assert await paid.deliver(succeeded) == "processed"

    # 1000 of 2900 paid: 1000 of the creator's 2900 gross, 20% of it commission.
    assert await ledger(engine) == {"charge": (2900, 580, 2320), "reversal": (1000, 200, 800)}
    _, routes = paid.payments
    request = routes["invoice_payments"].calls.last.request
    assert request.url.params["payment[type]"] == "payment_intent"
    assert request.url.params["payment[payment_intent]"] == "pi_in_a1"


async def test_a_partial_then_a_larger_refund_of_one_invoice_reverse_all_of_it(
    paid: Paid, engine: AsyncEngine
) -> None:
    await paid.send("refund.created", refund("in_a1", "re_1", 1000, "succeeded"), T0 + 100)
    await paid.send("refund.created", refund("in_a1", "re_2", 1900, "succeeded"), T0 + 300)

    assert await taken_back(engine) == (2900, 580, 2320)
    async with engine.connect() as connection:
        references = sorted(
            str(reference)
            for reference in (
                await connection.execute(select(Earning.reference).where(Earning.kind == "reversal"))
            ).scalars()
        )
    assert references == ["re_1", "re_2"]


async def test_a_failed_refund_gives_the_earnings_back(paid: Paid, engine: AsyncEngine) -> None:
    pending = event("refund.created", refund("in_a1", "re_1", 2900, "pending"), created=T0 + 100)
    failed = event("refund.failed", refund("in_a1", "re_1", 2900, "failed"), created=T0 + 150)

    await paid.deliver(pending)
    assert await taken_back(engine) == (2900, 580, 2320)
    await paid.deliver(failed)

    assert await ledger(engine) == {
        "charge": (2900, 580, 2320),
        "reversal": (2900, 580, 2320),
        "reinstatement": (2900, 580, 2320),
    }


async def test_a_refunds_creation_arriving_after_its_failure_reverses_nothing(
    paid: Paid, engine: AsyncEngine
) -> None:
    failed = event("refund.failed", refund("in_a1", "re_1", 2900, "failed"), created=T0 + 150)
    pending = event("refund.created", refund("in_a1", "re_1", 2900, "pending"), created=T0 + 100)

    for payload in (failed, pending, failed):
        await paid.deliver(payload)

    assert await ledger(engine) == {"charge": (2900, 580, 2320)}


async def test_a_dispute_is_reversed_when_opened_and_reinstated_when_won(
    paid: Paid, engine: AsyncEngine
) -> None:
    opened = event(
        "charge.dispute.created", dispute("in_a1", "dp_1", 2900, "needs_response"), created=T0 + 200
    )
    await paid.deliver(opened)
    assert await taken_back(engine) == (2900, 580, 2320)

    won = event("charge.dispute.closed", dispute("in_a1", "dp_1", 2900, "won"), created=T0 + 900)
    await paid.deliver(won)
    stale = event("charge.dispute.updated", dispute("in_a1", "dp_1", 2900, "under_review"), created=T0 + 500)
    await paid.deliver(stale)  # sent before it was won, delivered after

    assert await taken_back(engine) == (0, 0, 0)
    async with engine.connect() as connection:
        stored = (await connection.execute(select(InvoiceReversal))).one()
    assert (stored.source, stored.status, stored.amount) == ("dispute", "won", 0)


async def test_a_lost_dispute_stays_reversed_and_an_inquiry_reverses_nothing(
    paid: Paid, engine: AsyncEngine
) -> None:
    inquiry = dispute("in_a1", "dp_inquiry", 2900, "warning_needs_response")
    await paid.send("charge.dispute.created", inquiry, T0 + 200)
    assert await taken_back(engine) == (0, 0, 0)

    await paid.send("charge.dispute.closed", dispute("in_a1", "dp_2", 2900, "lost"), T0 + 900)
    # The `created` of the same dispute, delivered after it closed, changes nothing.
    await paid.send("charge.dispute.created", dispute("in_a1", "dp_2", 2900, "needs_response"), T0 + 200)

    assert await ledger(engine) == {"charge": (2900, 580, 2320), "reversal": (2900, 580, 2320)}


async def test_a_refund_before_the_paid_invoice_event_fetches_the_invoice_and_books_it_first(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active")
    fake, routes = stripe_payments
    fake.world = world
    paid = fake.paid("in_early")

    await deliver(
        client,
        worker_ctx,
        event("refund.created", refund("in_early", "re_e", 1450, "succeeded"), created=T0 + 100),
    )
    assert routes["invoice"].call_count == 1
    await deliver(client, worker_ctx, event("invoice.paid", paid, created=T0 + 5))

    # 1450 of 2900: half the gross; the charge is booked once, by whichever event came first.
    assert await ledger(engine) == {"charge": (2900, 580, 2320), "reversal": (1450, 290, 1160)}


async def test_an_invoice_first_seen_through_a_refund_gets_a_number_from_our_sequence(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active")
    fake, _ = stripe_payments
    fake.world = world
    fake.register({**fake.paid("in_unnumbered"), "number": None})  # Stripe gave it no number

    refunded = event("refund.created", refund("in_unnumbered", "re_n", 1000, "succeeded"), created=T0 + 100)
    assert await deliver(client, worker_ctx, refunded) == "processed"

    invoice = await one(engine, Invoice, stripe_invoice_id="in_unnumbered")
    assert invoice.number == "INV-000001"


async def test_a_refund_named_by_its_charge_only_finds_the_payment_intent(
    paid: Paid, engine: AsyncEngine
) -> None:
    _, routes = paid.payments
    obj = refund("in_a1", "re_c", 2900, "succeeded", by_charge=True)

    assert await paid.send("refund.created", obj, T0 + 100) == "processed"

    assert routes["charge"].call_count == 1
    assert await taken_back(engine) == (2900, 580, 2320)


async def test_a_refund_of_a_payment_that_paid_no_invoice_is_ignored(paid: Paid, engine: AsyncEngine) -> None:
    obj = refund("in_nowhere", "re_x", 500, "succeeded")

    assert await paid.send("refund.created", obj, T0 + 100) == "ignored"

    assert await ledger(engine) == {"charge": (2900, 580, 2320)}


def _story(fake: FakePayments) -> list[dict[str, Any]]:
    """Two paid invoices; the first refunded twice (one refund fails), the second disputed and lost,
    a third disputed and won."""
    return [
        event("invoice.paid", fake.paid("in_s1"), created=T0 + 5),
        event("invoice.paid", fake.paid("in_s2", amount=1000, tax=100), created=T0 + 6),
        event("invoice.paid", fake.paid("in_s3", amount=5000), created=T0 + 7),
        event("refund.created", refund("in_s1", "re_s1", 700, "pending"), created=T0 + 100),
        event("refund.updated", refund("in_s1", "re_s1", 700, "succeeded"), created=T0 + 101),
        event("refund.created", refund("in_s1", "re_s2", 2200, "pending"), created=T0 + 102),
        event("refund.failed", refund("in_s1", "re_s2", 2200, "failed"), created=T0 + 103),
        event("refund.created", refund("in_s1", "re_s3", 1000, "succeeded"), created=T0 + 104),
        event("charge.dispute.created", dispute("in_s2", "dp_s2", 1100, "needs_response"), created=T0 + 200),
        event("charge.dispute.updated", dispute("in_s2", "dp_s2", 1100, "under_review"), created=T0 + 201),
        event("charge.dispute.closed", dispute("in_s2", "dp_s2", 1100, "lost"), created=T0 + 202),
        event("charge.dispute.created", dispute("in_s3", "dp_s3", 5000, "needs_response"), created=T0 + 300),
        event("charge.dispute.closed", dispute("in_s3", "dp_s3", 5000, "won"), created=T0 + 301),
    ]


async def _run_story(
    client: httpx.AsyncClient, ctx: Ctx, engine: AsyncEngine, fake: FakePayments, order: random.Random | None
) -> tuple[tuple[int, int, int], list[tuple[str, str, int]]]:
    await truncate(engine)
    fake.world = await make_world(engine, status="active", key="refunds")
    fake.invoices.clear()
    events = _story(fake)
    if order is not None:
        events = [e for e in events for _ in range(10)]
        order.shuffle(events)
    for payload in events:
        await deliver(client, ctx, payload)
    async with engine.connect() as connection:
        sources = sorted(
            (r.stripe_object_id, r.status, r.amount)
            for r in (await connection.execute(select(InvoiceReversal))).all()
        )
    return await taken_back(engine), sources


async def test_refunds_and_disputes_shuffled_with_duplicates_end_like_the_in_order_run(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    fake, _ = stripe_payments
    expected = await _run_story(client, worker_ctx, engine, fake, order=None)
    # in_s1: 1700 of 2900 refunded -> 1700 gross, 340 commission; in_s2: all 1000 of gross
    # (1100 with tax) lost; in_s3: won, nothing.
    assert expected[0] == (2700, 540, 2160)
    assert [s[:2] for s in expected[1]] == [
        ("dp_s2", "lost"),
        ("dp_s3", "won"),
        ("re_s1", "succeeded"),
        ("re_s2", "failed"),
        ("re_s3", "succeeded"),
    ]
    for seed in range(3):
        got = await _run_story(client, worker_ctx, engine, fake, order=random.Random(seed))  # noqa: S311
        assert got == expected, f"seed {seed}"


async def test_the_dev_emulator_links_a_paid_invoice_to_its_payment_and_refunds_send_their_event(
    client: httpx.AsyncClient, worker_ctx: Ctx, auth: Auth, settings: Settings
) -> None:
    creator = auth("creator")
    plan = await create_plan(client, creator, new_api_id(), monthly_price="12")
    headers = auth("consumer")
    await register(client, headers)
    await add_card(client, headers)
    subscribed = (await subscribe(client, headers, plan)).json()
    gateway = worker_ctx["resources"].stripe
    stripe_subscription = await gateway.retrieve_subscription(subscribed["stripe_subscription_id"])
    invoice_id = stripe_subscription.latest_invoice
    key = (settings.stripe_secret_key.get_secret_value(), "")
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base), auth=key) as stripe:
        intent = (await stripe.get(f"/v1/invoices/{invoice_id}")).json()["payment_intent"]
        refunded = await stripe.post("/v1/refunds", data={"payment_intent": intent, "amount": "300"})
        assert refunded.status_code == 200, refunded.text
        events = (await stripe.get("/v1/events", params={"type": "refund.created"})).json()["data"]

    assert await gateway.invoice_of_payment_intent(intent) == invoice_id
    assert await gateway.invoice_of_payment_intent("pi_unknown_to_invoices") is None
    assert await gateway.payment_intent_of_charge(refunded.json()["charge"]) == intent
    assert [e["data"]["object"]["id"] for e in events] == [refunded.json()["id"]]


async def test_two_workers_on_two_refunds_of_one_invoice_book_both_exactly(
    paid: Paid, engine: AsyncEngine
) -> None:
    first = event("refund.created", refund("in_a1", "re_r1", 1000, "succeeded"), created=T0 + 100)
    second = event("refund.created", refund("in_a1", "re_r2", 1900, "succeeded"), created=T0 + 100)
    for payload in (first, second):
        await post(paid.client, payload)

    outcomes = await asyncio.gather(*(process_stripe_event(paid.ctx, p["id"]) for p in (first, second)))

    assert outcomes == ["processed", "processed"]
    assert await taken_back(engine) == (2900, 580, 2320)
