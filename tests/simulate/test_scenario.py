"""`billing simulate`: a small seeded scenario over test-clock time leaves no drift."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dev.processes import free_port, siblings_emulator
from app.dev.simulate import Scenario, plan_scenario, run_scenario


@pytest.fixture
def stand_ins(settings: Settings) -> Iterator[Settings]:
    """The dev metering and API key stand-ins, served for real, as `billing dev` runs them."""
    port = free_port()
    siblings = siblings_emulator(port)
    siblings.start(timeout=30)
    url = f"http://127.0.0.1:{port}"
    yield settings.model_copy(update={"metering_service_url": url, "api_key_service_url": url})
    siblings.stop()


def test_the_same_seed_plans_the_same_scenario() -> None:
    scenario = Scenario(consumers=20, months=3, seed=7)
    assert plan_scenario(scenario) == plan_scenario(scenario)
    assert plan_scenario(scenario) != plan_scenario(Scenario(consumers=20, months=3, seed=8))
    planned = plan_scenario(scenario)
    assert {c.pay_per_use for c in planned} == {True, False}
    assert all(c.card_fails_from_month is None for c in planned if c.pay_per_use)


@pytest.mark.parametrize("faults", [False, True], ids=["in_order", "duplicated_and_shuffled"])
async def test_a_small_scenario_reconciles_invoices_and_usage_with_stripe(
    stand_ins: Settings, engine: AsyncEngine, faults: bool
) -> None:
    scenario = Scenario(consumers=6, months=3, seed=3, faults=faults)
    failing = sum(1 for c in plan_scenario(scenario) if c.card_fails_from_month is not None)
    assert failing > 0
    report = await run_scenario(stand_ins, scenario)
    assert report.failed_events == 0
    for currency, totals in report.totals.items():
        assert totals.invoices_ours == totals.invoices_stripe, currency
        assert totals.paid_ours == totals.paid_stripe, currency
        assert totals.calls_metered == totals.calls_billed, currency
        assert totals.statuses_ours == totals.statuses_stripe, currency
    assert sum(t.invoices_stripe for t in report.totals.values()) >= 6 * 3
    assert report.deliveries >= (2 if faults else 1) * report.events
    assert sum(t.calls_metered for t in report.totals.values()) > 0
    assert set(report.totals) == {"usd", "eur", "jpy"}
    # Each failing card: past due at the second renewal, retried, cancelled before the third.
    assert sum(t.statuses_ours.get("cancelled", 0) for t in report.totals.values()) == failing
    assert not report.drift
