"""The reconcile report's rules: what each comparison expects of our store."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from app.reconcile.rules import (
    InvoiceRow,
    compare_earnings,
    compare_invoice,
    creators_collected,
    expected_creator_net,
    usage_drift_cents,
)
from app.stripe.invoices import StripeInvoice

RATE = Decimal("0.20")


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
    assert expected_creator_net(_invoice(), 0, RATE) == 2320


def test_tax_is_never_the_creators() -> None:
    taxed = _invoice(total=3190, amount_paid=3190, total_taxes=[{"amount": 290}])
    assert creators_collected(taxed) == 2900
    assert expected_creator_net(taxed, 0, RATE) == 2320


def test_only_what_was_collected_earns_when_the_balance_paid_part() -> None:
    partly_from_balance = _invoice(amount_paid=1000, amount_due=1000)
    assert expected_creator_net(partly_from_balance, 0, RATE) == 800


@pytest.mark.parametrize(
    "fields",
    [{"status": "open", "amount_paid": 0}, {"total": -500, "amount_paid": 0}, {"status": "void"}],
)
def test_unpaid_or_negative_invoices_earn_nothing(fields: dict[str, Any]) -> None:
    assert expected_creator_net(_invoice(**fields), 0, RATE) == 0


def test_a_refund_takes_back_its_share_and_a_full_one_everything() -> None:
    assert expected_creator_net(_invoice(), 1450, RATE) == 2320 - 1160
    assert expected_creator_net(_invoice(), 2900, RATE) == 0


def test_a_ledger_that_booked_the_gross_drifts_by_the_commission() -> None:
    drift = compare_earnings(_invoice(), ledger_net=2900, reversed_total=0, commission=RATE)
    assert drift is not None
    assert (drift.ours, drift.stripe, drift.cents, drift.currency) == (2900, 2320, 580, "usd")


def test_a_ledger_that_matches_the_rule_has_no_drift() -> None:
    assert compare_earnings(_invoice(), ledger_net=2320, reversed_total=0, commission=RATE) is None


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
