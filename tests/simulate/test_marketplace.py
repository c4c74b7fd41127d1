"""The marketplace simulation: a small seeded quarter, faults on, reconciles to the cent, and the
oracle it is checked against follows Stripe's billing rules."""

from __future__ import annotations

import time
from decimal import ROUND_HALF_UP, Decimal

from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.simulate.faults import FaultRates
from app.simulate.oracle import expect, usage_between
from app.simulate.runner import simulate
from app.simulate.scenario import DAY, NOON, Action, ConsumerSpec, build_scenario


def test_the_same_seed_makes_the_same_marketplace() -> None:
    first, again = (
        build_scenario(consumers=30, months=3, seed=7),
        build_scenario(consumers=30, months=3, seed=7),
    )
    assert first == again
    assert first != build_scenario(consumers=30, months=3, seed=8)
    assert {c.plan for c in first.consumers} == {"free", "basic", "pro", "metered", "overage"}
    assert {a.kind for c in first.consumers for a in c.actions} >= {"upgrade", "cancel_now", "card_fails"}


def test_the_oracle_carries_a_downgrade_credit_into_the_next_renewals_and_takes_it_from_the_creator() -> None:
    scenario = build_scenario(consumers=0, months=3, seed=1)
    moment = scenario.start + 15 * DAY + NOON  # half-way through January (31 days)
    scenario.consumers.append(
        ConsumerSpec("c-0", "creator-usd", "pro", scenario.start, [Action(moment, "downgrade")])
    )
    expected = expect(scenario, scenario.end + 3 * 3600)

    remaining = Decimal(16 * DAY - NOON) / Decimal(31 * DAY)
    credit = int((3000 * remaining).to_integral_value()) - int((1000 * remaining).to_integral_value())
    invoices = expected.invoices["c-0"]
    assert [(i.reason, i.total) for i in invoices] == [
        ("subscription_create", 3000),
        ("subscription_update", -credit),
        ("subscription_cycle", 1000),
        ("subscription_cycle", 1000),
        ("subscription_cycle", 1000),
    ]
    assert [i.amount_paid for i in invoices] == [3000, 0, 0, 1000 - (credit - 1000), 1000]
    book = expected.creators["creator-usd"]
    assert book.collected == sum(i.amount_paid for i in invoices)
    assert book.earned + book.platform == book.collected  # the credit, used up, was collected once


def test_the_oracle_bills_an_overage_plans_price_and_its_calls_past_the_included_ones_on_one_invoice() -> (
    None
):
    scenario = build_scenario(consumers=0, months=2, seed=1)
    consumer = ConsumerSpec("c-1", "creator-jpy", "overage", scenario.start, calls_per_day=(150, 3))
    scenario.consumers.append(consumer)
    plan = scenario.creators["creator-jpy"].plans["overage"]
    expected = expect(scenario, scenario.end + 3 * 3600)

    first_end = scenario.start + 31 * DAY
    calls = [
        usage_between(consumer, scenario.start, first_end),
        usage_between(consumer, first_end, scenario.end),
    ]
    assert calls[0] > (plan.included or 0)  # 150+ calls a day for 31 days: past the 3,000 included
    invoices = expected.invoices["c-1"]
    assert [(i.reason, i.usage) for i in invoices] == [
        ("subscription_create", None),
        ("subscription_cycle", calls[0]),
        ("subscription_cycle", calls[1]),
    ]
    past = [max(n - (plan.included or 0), 0) for n in calls]
    # 0.3 yen per call past the included ones, rounded half up to the yen, beside the monthly price.
    assert [i.total for i in invoices] == [
        plan.monthly,
        plan.monthly + int((Decimal("0.3") * past[0]).to_integral_value(ROUND_HALF_UP)),
        plan.monthly + int((Decimal("0.3") * past[1]).to_integral_value(ROUND_HALF_UP)),
    ]


async def test_a_simulated_quarter_with_faults_reconciles_to_the_cent(
    settings: Settings, engine: AsyncEngine
) -> None:
    scenario = build_scenario(consumers=50, months=3, seed=7)
    started = time.perf_counter()
    report = await simulate(settings, scenario, FaultRates())
    elapsed = time.perf_counter() - started
    console = Console(width=140, record=True)
    report.render(console, examples=20)
    print(console.export_text(), f"{elapsed:.1f}s")  # noqa: T201 - pytest shows it when the test fails

    assert sum(check.checked for check in report.checks) > 400
    assert report.faults.duplicate_webhooks > 0
    assert report.faults.workers_killed > 0
    assert report.faults.stripe_unavailable + report.faults.stripe_answer_lost > 0
    assert report.clean, "drift: see the tables above"
