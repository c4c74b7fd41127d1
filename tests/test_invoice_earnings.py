"""Creator earnings follow the money an invoice collected: credit lines netted, the customer
balance counted once, never more than the consumer paid (signed `invoice.paid` events)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.models import Earning, Invoice, PricingPlan, PricingPlanVersion
from tests.billing_data import World, event, make_world
from tests.stripe_payments import T0, FakePayments, Payments, mocked_payments, refund
from tests.support.worker import Ctx, deliver

PERIOD = (T0, T0 + 30 * 86400)
SIGN = {"charge": 1, "reinstatement": 1, "reversal": -1, "credit": -1}


@pytest.fixture
def stripe_payments(settings: Settings) -> Iterator[Payments]:
    with mocked_payments(settings) as payments:
        yield payments


async def add_plan(
    engine: AsyncEngine, world: World, name: str, monthly_amount: int
) -> tuple[uuid.UUID, str]:
    """Another plan of the world's API, with its own Stripe price."""
    plan_id, price = uuid.uuid4(), f"price_{uuid.uuid4().hex[:10]}"
    async with AsyncSession(engine) as session, session.begin():
        session.add(PricingPlan(id=plan_id, api_id=world.api_id, name=name, type="subscription"))
        await session.flush()
        session.add(
            PricingPlanVersion(
                plan_id=plan_id,
                version=1,
                currency="usd",
                monthly_amount=monthly_amount,
                stripe_price_id=price,
            )
        )
    return plan_id, price


def apply_balance(total: int, starting_balance: int) -> tuple[int, int]:
    """Stripe at finalisation: (amount_due, ending_balance) of an invoice of `total` for a customer
    whose balance was `starting_balance` (negative: a credit, positive: a debt)."""
    if total <= 0:
        return 0, starting_balance + total  # nothing due; a credit invoice adds to the credit
    if starting_balance < 0:
        applied = min(-starting_balance, total)
        return total - applied, starting_balance + applied
    return total + starting_balance, 0  # the debt is charged with it


def paid_invoice(
    world: World,
    invoice_id: str,
    lines: list[tuple[int, str]],
    *,
    tax: int = 0,
    starting_balance: int = 0,
    amount_paid: int | None = None,
) -> dict[str, Any]:
    """A paid Stripe invoice of these (amount, price) lines, with Stripe's balance arithmetic: the
    balance (negative: a credit) applies to the total; a negative total adds to the credit."""
    subtotal = sum(amount for amount, _ in lines)
    total = subtotal + tax
    amount_due, ending_balance = apply_balance(total, starting_balance)
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": world.customer,
        "status": "paid",
        "number": f"INV-{invoice_id[-6:]}",
        "currency": "usd",
        "subtotal": subtotal,
        "total": total,
        "total_taxes": [{"amount": tax}] if tax else [],
        "starting_balance": starting_balance,
        "ending_balance": ending_balance,
        "amount_due": amount_due,
        "amount_paid": amount_due if amount_paid is None else amount_paid,
        "amount_remaining": 0,
        "period_start": PERIOD[0],
        "period_end": PERIOD[1],
        "status_transitions": {"paid_at": T0 + 5},
        "parent": {"subscription_details": {"subscription": world.stripe_subscription}},
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": f"il_{invoice_id}_{index}",
                    "amount": amount,
                    "currency": "usd",
                    "description": "Unused time" if amount < 0 else "Remaining time",
                    "quantity": 1,
                    "period": {"start": PERIOD[0], "end": PERIOD[1]},
                    "pricing": {"price_details": {"price": price}},
                    "parent": {
                        "subscription_item_details": {
                            "subscription": world.stripe_subscription,
                            "proration": True,
                        }
                    },
                }
                for index, (amount, price) in enumerate(lines)
            ],
        },
    }


async def booked(
    engine: AsyncEngine, invoice_id: str | None = None
) -> list[tuple[str, uuid.UUID, int, int, int]]:
    """(kind, plan, gross, commission, net) of the ledger lines, of one Stripe invoice or all."""
    statement = select(
        Earning.kind, Earning.plan_id, Earning.gross_amount, Earning.commission_amount, Earning.net_amount
    ).join(Invoice, Invoice.id == Earning.invoice_id)
    if invoice_id is not None:
        statement = statement.where(Invoice.stripe_invoice_id == invoice_id)
    async with engine.connect() as connection:
        return sorted((str(k), p, g, c, n) for k, p, g, c, n in (await connection.execute(statement)).all())


def signed_earned(lines: list[tuple[str, uuid.UUID, int, int, int]]) -> int:
    """What the creators keep in all (net + commission), reversals and credits subtracted."""
    return sum(SIGN[kind] * gross for kind, _, gross, _, _ in lines)


async def pay(
    client: httpx.AsyncClient, ctx: Ctx, fake: FakePayments, invoice: dict[str, Any], at: int
) -> None:
    fake.register(invoice)
    assert await deliver(client, ctx, event("invoice.paid", invoice, created=at)) == "processed"


async def test_an_upgrade_invoice_books_the_net_of_its_credit_and_charge_lines(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=1000)
    business, business_price = await add_plan(engine, world, "Business", 3000)
    fake, _ = stripe_payments
    # always_invoice upgrade half-way: -500 unused Pro, +1500 remaining Business, 1000 charged.
    upgrade = paid_invoice(world, "in_up1", [(-500, world.price), (1500, business_price)])
    assert upgrade["amount_paid"] == 1000

    for _ in range(3):
        await pay(client, worker_ctx, fake, upgrade, T0 + 10)

    assert await booked(engine) == [("charge", business, 1000, 200, 800)]


async def test_a_credit_invoice_books_no_earnings_and_its_credit_is_collected_once(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=1000)
    basic, basic_price = await add_plan(engine, world, "Basic", 600)
    fake, _ = stripe_payments
    await pay(client, worker_ctx, fake, paid_invoice(world, "in_first", [(1000, world.price)]), T0 + 5)
    # Downgrade half-way: -500 unused Pro, +300 remaining Basic: total -200, paid with nothing,
    # and a 200 credit left in the customer's balance.
    downgrade = paid_invoice(world, "in_down", [(-500, world.price), (300, basic_price)])
    assert (downgrade["total"], downgrade["amount_paid"], downgrade["ending_balance"]) == (-200, 0, -200)
    for _ in range(3):
        await pay(client, worker_ctx, fake, downgrade, T0 + 10)
    # The next month's 600 is paid 200 from that credit and 400 by card.
    renewal = paid_invoice(world, "in_next", [(600, basic_price)], starting_balance=-200)
    assert (renewal["amount_paid"], renewal["ending_balance"]) == (400, 0)
    await pay(client, worker_ctx, fake, renewal, T0 + 40 * 86400)

    assert [kind for kind, *_ in await booked(engine, "in_down")] == ["credit"]
    assert await booked(engine, "in_down") == [("credit", world.plan_id, 200, 40, 160)]
    assert await booked(engine, "in_next") == [("charge", basic, 600, 120, 480)]
    # The consumer paid 1000 + 400 by card; the creators keep exactly that, not 1000 + 300 + 600.
    assert signed_earned(await booked(engine)) == 1400


async def test_an_invoice_paid_partly_from_the_balance_books_the_card_and_the_credit_part(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=2900)
    fake, _ = stripe_payments
    # 2900 + 290 tax, 1000 of it from an earlier credit, 2190 by card.
    invoice = paid_invoice(world, "in_bal", [(2900, world.price)], tax=290, starting_balance=-1000)
    assert invoice["amount_paid"] == 2190

    await pay(client, worker_ctx, fake, invoice, T0 + 5)

    assert await booked(engine) == [("charge", world.plan_id, 2900, 580, 2320)]


async def test_a_paid_invoice_books_only_what_was_collected(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=2900)
    fake, _ = stripe_payments
    # A credit note before payment took 900 off: 2000 of 2900 collected.
    invoice = paid_invoice(world, "in_cn", [(2900, world.price)], amount_paid=2000)

    await pay(client, worker_ctx, fake, invoice, T0 + 5)

    assert await booked(engine) == [("charge", world.plan_id, 2000, 400, 1600)]


async def test_refunds_of_an_invoice_paid_from_the_balance_never_take_back_more_than_was_booked(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=600)
    fake, _ = stripe_payments
    fake.world = world
    # 600: 200 from the credit balance, 400 by card; the card's 400 is refunded in two parts.
    await pay(
        client, worker_ctx, fake, paid_invoice(world, "in_r", [(600, world.price)], starting_balance=-200), T0
    )
    await deliver(
        client,
        worker_ctx,
        event("refund.created", refund("in_r", "re_1", 100, "succeeded"), created=T0 + 100),
    )
    after_first = signed_earned(await booked(engine))
    await deliver(
        client,
        worker_ctx,
        event("refund.created", refund("in_r", "re_2", 300, "succeeded"), created=T0 + 200),
    )

    # 100 of the 600 collected: 100 of the 600 booked; then all 400 paid by card: 400 of it.
    assert after_first == 500
    assert signed_earned(await booked(engine)) == 200
    reversals = [line for line in await booked(engine) if line[0] == "reversal"]
    assert sum(gross for _, _, gross, _, _ in reversals) <= 600


async def test_a_refund_of_everything_collected_takes_back_everything_booked(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    world = await make_world(engine, status="active", monthly_amount=2900)
    fake, _ = stripe_payments
    fake.world = world
    # 2900 billed, a credit note took 900 off before payment: 2000 collected, all refunded.
    await pay(
        client, worker_ctx, fake, paid_invoice(world, "in_cr", [(2900, world.price)], amount_paid=2000), T0
    )
    refund_event = event("refund.created", refund("in_cr", "re_all", 2000, "succeeded"), created=T0 + 100)
    assert await deliver(client, worker_ctx, refund_event) == "processed"

    assert signed_earned(await booked(engine)) == 0


async def test_earnings_never_exceed_amount_collected(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    """A consumer's year of plan changes, renewals from the balance and refunds, drawn at random:
    after every event the creators' earnings (net + commission) are at most what the consumer's
    payments collected, less what was refunded; and per invoice, never more than it collected."""
    world = await make_world(engine, status="active", monthly_amount=1000)
    fake, _ = stripe_payments
    fake.world = world
    prices = [world.price] + [(await add_plan(engine, world, f"P{i}", 0))[1] for i in range(3)]
    rng = random.Random(20261201)  # noqa: S311  (a fixed seed: the same story each run)
    balance, cash, refunded = 0, 0, 0
    for month in range(24):
        invoice_id = f"in_m{month}"
        kind = rng.choice(["renewal", "upgrade", "downgrade", "mixed"])
        old, new = rng.sample(prices, 2)
        if kind == "renewal":
            lines = [(rng.randrange(100, 5000, 10), new)]
        elif kind == "upgrade":
            credit = rng.randrange(10, 2000)
            lines = [(-credit, old), (credit + rng.randrange(0, 3000), new)]
        elif kind == "downgrade":
            credit = rng.randrange(100, 3000)
            lines = [(-credit, old), (rng.randrange(0, credit), new)]
        else:
            lines = [(rng.randrange(-2000, 2000), rng.choice(prices)) for _ in range(rng.randrange(1, 5))]
        tax = rng.choice([0, 0, rng.randrange(0, 400)]) if sum(a for a, _ in lines) > 0 else 0
        invoice = paid_invoice(world, invoice_id, lines, tax=tax, starting_balance=balance)
        balance = invoice["ending_balance"]
        cash += invoice["amount_paid"]
        await pay(client, worker_ctx, fake, invoice, T0 + month * 86400)
        if invoice["amount_paid"] > 0 and rng.random() < 0.3:
            amount = rng.randrange(1, invoice["amount_paid"] + 1)
            refunded += amount
            refund_event = event(
                "refund.created",
                refund(invoice_id, f"re_{month}", amount, "succeeded"),
                created=T0 + month * 86400 + 1,
            )
            assert await deliver(client, worker_ctx, refund_event) == "processed"

        collected = max(invoice["total"], 0)  # paid in full: by card and from the credit balance
        on_invoice = [line for line in await booked(engine, invoice_id) if line[0] in ("charge", "credit")]
        assert signed_earned(on_invoice) <= collected, (month, lines, invoice)
        assert all(g == c + n for _, _, g, c, n in await booked(engine))
        assert signed_earned(await booked(engine)) <= cash - refunded, (month, lines)
