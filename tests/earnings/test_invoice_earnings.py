"""Creator earnings follow the money an invoice collected: credit lines netted, the customer
balance counted once, never more than the consumer paid (signed `invoice.paid` events)."""

from __future__ import annotations

import random
from decimal import Decimal

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.models import PricingPlanVersion
from tests.support.billing_data import event, make_world
from tests.support.earnings import add_plan, booked, paid_invoice, pay, signed_earned
from tests.support.stripe_payments import T0, Payments, refund
from tests.support.worker import Ctx, deliver


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


async def test_an_overage_line_is_booked_for_the_plan_whose_overage_price_billed_it(
    client: httpx.AsyncClient, worker_ctx: Ctx, engine: AsyncEngine, stripe_payments: Payments
) -> None:
    """A plan change bills the old plan's overage on the change's invoice: those calls were made
    on the old plan, so its creator line is the old plan's, not the plan the subscription is on now."""
    world = await make_world(engine, status="active", monthly_amount=1000)
    metered, metered_price = await add_plan(engine, world, "Metered", 500)
    overage_price = f"price_overage_{metered.hex[:8]}"
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(
            update(PricingPlanVersion)
            .where(PricingPlanVersion.plan_id == metered)
            .values(
                call_limit=1000,
                overage_price_per_call=Decimal("0.01"),
                stripe_overage_price_id=overage_price,
            )
        )
    fake, _ = stripe_payments
    lines = [(-250, metered_price), (700, overage_price), (500, world.price)]
    change = paid_invoice(world, "in_change1", lines)

    await pay(client, worker_ctx, fake, change, T0 + 10)

    booked_lines = await booked(engine, "in_change1")
    by_plan = {plan: gross for kind, plan, gross, _, _ in booked_lines if kind == "charge"}
    assert by_plan == {metered: 450, world.plan_id: 500}
