"""The reconcile report's rules: what each comparison expects of our store."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from app.reconcile.rows import InvoiceRow, PlanCatalog
from app.reconcile.rules import (
    compare_earnings,
    compare_invoice,
    expected_plan_nets,
    stripe_collected,
    usage_drift_cents,
)
from app.stripe.invoices import StripeInvoice
from tests.support.billing_data import World
from tests.support.earnings import paid_invoice

RATE = Decimal("0.20")
PRO, BUSINESS = uuid.uuid4(), uuid.uuid4()  # two plans of one API
PRO_PRICE, BUSINESS_PRICE = "price_rule_pro", "price_rule_business"
CATALOG = PlanCatalog(
    plan_of_price={PRO_PRICE: PRO, BUSINESS_PRICE: BUSINESS},
    plan_of_subscription={"sub_rule": PRO},
    owners={PRO: ("api-rule", "creator-rule"), BUSINESS: ("api-rule", "creator-rule")},
)
WORLD = World(
    consumer_id=uuid.uuid4(), customer="cus_rule", api_id="api-rule", creator_id="creator-rule",
    plan_id=PRO, price=PRO_PRICE, subscription_id=uuid.uuid4(), stripe_subscription="sub_rule",
    plan_type="subscription",
)  # fmt: skip


def _payload(
    lines: list[tuple[int, str]], *, subscription: str = "sub_rule", **fields: Any
) -> dict[str, Any]:
    """Stripe's JSON of a paid subscription invoice of these (amount, price) lines."""
    payload = paid_invoice(WORLD, "in_rule", lines, **fields)
    payload["parent"] = {"subscription_details": {"subscription": subscription}}
    return payload


def _paid(lines: list[tuple[int, str]], **fields: Any) -> StripeInvoice:
    return StripeInvoice.from_payload(_payload(lines, **fields))


def _invoice(**fields: Any) -> StripeInvoice:
    payload: dict[str, Any] = {
        "id": "in_rule", "object": "invoice", "customer": "cus_rule", "status": "paid", "currency": "usd",
        "amount_due": 2900, "amount_paid": 2900, "subtotal": 2900, "total": 2900, "total_taxes": [],
    }  # fmt: skip
    payload.update(fields)
    return StripeInvoice.from_payload(payload)


def _row(**fields: Any) -> InvoiceRow:
    values: dict[str, Any] = {
        "id": uuid.uuid4(), "status": "paid", "currency": "usd", "total": 2900, "amount_paid": 2900,
        "subscription_id": None,
    }  # fmt: skip
    values.update(fields)
    return InvoiceRow(**values)


def test_creators_earn_collected_times_one_minus_commission() -> None:
    assert expected_plan_nets(_paid([(2900, PRO_PRICE)]), CATALOG, 0, RATE) == {PRO: 2320}


def test_tax_is_never_the_creators() -> None:
    taxed = _paid([(2900, PRO_PRICE)], tax=290)
    assert stripe_collected(taxed) == 3190
    assert expected_plan_nets(taxed, CATALOG, 0, RATE) == {PRO: 2320}


def test_an_upgrade_invoice_expects_the_net_of_its_credit_and_charge_lines() -> None:
    upgrade = _paid([(-500, PRO_PRICE), (1500, BUSINESS_PRICE)])
    assert upgrade.amount_paid == 1000
    assert expected_plan_nets(upgrade, CATALOG, 0, RATE) == {BUSINESS: 800}


def test_a_negative_total_downgrade_expects_its_credit_taken_back() -> None:
    downgrade = _paid([(-500, PRO_PRICE), (300, BUSINESS_PRICE)])
    assert (downgrade.total, downgrade.amount_paid, downgrade.ending_balance) == (-200, 0, -200)
    assert stripe_collected(downgrade) == 0
    assert expected_plan_nets(downgrade, CATALOG, 0, RATE) == {PRO: -160}


def test_a_renewal_paid_partly_from_the_balance_expects_card_and_credit() -> None:
    renewal = _paid([(600, PRO_PRICE)], starting_balance=-200)
    assert (renewal.amount_paid, stripe_collected(renewal)) == (400, 600)
    assert expected_plan_nets(renewal, CATALOG, 0, RATE) == {PRO: 480}


def test_only_what_was_collected_earns_when_a_credit_note_took_part_off() -> None:
    credited = _paid([(2900, PRO_PRICE)], amount_paid=1000)
    assert expected_plan_nets(credited, CATALOG, 0, RATE) == {PRO: 800}


def test_a_line_whose_price_is_not_ours_belongs_to_its_subscriptions_plan() -> None:
    assert expected_plan_nets(_paid([(2900, "price_adhoc")]), CATALOG, 0, RATE) == {PRO: 2320}
    unknown = _paid([(2900, "price_adhoc")], subscription="sub_not_ours")
    assert expected_plan_nets(unknown, CATALOG, 0, RATE) == {}


@pytest.mark.parametrize("status", ["open", "void", "uncollectible", "draft"])
def test_an_unpaid_invoice_expects_no_earnings(status: str) -> None:
    unpaid = StripeInvoice.from_payload({**_payload([(2900, PRO_PRICE)]), "status": status})
    assert expected_plan_nets(unpaid, CATALOG, 0, RATE) == {}


def test_a_refund_takes_back_its_share_and_a_full_one_everything() -> None:
    invoice = _paid([(2900, PRO_PRICE)])
    assert expected_plan_nets(invoice, CATALOG, 1450, RATE) == {PRO: 2320 - 1160}
    assert expected_plan_nets(invoice, CATALOG, 2900, RATE) == {PRO: 0}
    # Paid 400 by card and 200 from the credit: a refund of the 400 takes back 400 of the 600.
    renewal = _paid([(600, PRO_PRICE)], starting_balance=-200)
    assert expected_plan_nets(renewal, CATALOG, 400, RATE) == {PRO: 480 - 320}


def test_a_ledger_that_booked_the_gross_drifts_by_the_commission() -> None:
    drift = compare_earnings(_paid([(2900, PRO_PRICE)]), CATALOG, {PRO: 2900}, 0, RATE)
    assert drift is not None
    assert (drift.ours, drift.stripe, drift.cents, drift.currency) == (2900, 2320, 580, "usd")


def test_a_ledger_that_matches_the_rule_has_no_drift() -> None:
    assert compare_earnings(_paid([(2900, PRO_PRICE)]), CATALOG, {PRO: 2320}, 0, RATE) is None
    downgrade = _paid([(-500, PRO_PRICE), (300, BUSINESS_PRICE)])
    assert compare_earnings(downgrade, CATALOG, {PRO: -160}, 0, RATE) is None


def test_a_missing_credit_line_is_drift_of_its_net() -> None:
    downgrade = _paid([(-500, PRO_PRICE), (300, BUSINESS_PRICE)])
    drift = compare_earnings(downgrade, CATALOG, {}, 0, RATE)
    assert drift is not None
    assert (drift.ours, drift.stripe, drift.cents) == (0, -160, 160)
    assert f"plan {PRO} 0 here, -160 expected" in drift.detail


def test_earnings_booked_to_the_wrong_plan_drift_even_when_the_total_agrees() -> None:
    upgrade = _paid([(-500, PRO_PRICE), (1500, BUSINESS_PRICE)])
    drift = compare_earnings(upgrade, CATALOG, {PRO: 800}, 0, RATE)
    assert drift is not None
    assert (drift.ours, drift.stripe, drift.cents) == (800, 800, 1600)


def test_an_invoice_that_agrees_with_stripe_has_no_drift() -> None:
    assert compare_invoice(_row(), _invoice(), customer_is_ours=True) is None


def test_invoice_drift_is_worth_the_larger_money_difference_and_names_each_field() -> None:
    drift = compare_invoice(_row(status="open", amount_paid=0), _invoice(), customer_is_ours=True)
    assert drift is not None
    assert drift.cents == 2900
    assert "status open here, paid at Stripe" in drift.detail
    assert "amount_paid 0 here, 2900 at Stripe" in drift.detail


def test_a_status_difference_alone_is_drift_worth_no_money() -> None:
    drift = compare_invoice(_row(status="void"), _invoice(status="uncollectible"), customer_is_ours=True)
    assert drift is not None
    assert drift.cents == 0


def test_a_stripe_invoice_of_our_customer_missing_here_is_drift_of_its_total() -> None:
    drift = compare_invoice(None, _invoice(), customer_is_ours=True)
    assert drift is not None
    assert (drift.ours, drift.stripe, drift.cents) == (None, 2900, 2900)
    assert compare_invoice(None, _invoice(), customer_is_ours=False) is None


def test_negative_credit_totals_compare_as_stripe_reports_them() -> None:
    credit = _invoice(total=-1200, amount_paid=0, amount_due=0)
    assert compare_invoice(_row(total=-1200, amount_paid=0), credit, customer_is_ours=True) is None
    drift = compare_invoice(_row(total=0, amount_paid=0), credit, customer_is_ours=True)
    assert drift is not None
    assert drift.cents == 1200


def test_usage_drift_is_priced_at_the_per_call_price_in_minor_units() -> None:
    assert usage_drift_cents(Decimal(150), Decimal("0.002"), "usd") == 30  # 150 x 0.2 cents
    assert usage_drift_cents(Decimal(-3), Decimal("0.005"), "usd") == 2  # 1.5 cents, half up
    assert usage_drift_cents(Decimal(7), Decimal("3"), "jpy") == 21
    assert usage_drift_cents(Decimal(7), None, "usd") == 0
