"""Stripe's JSON is read in one place: each shape parses the same from the pinned API version's
JSON and from the older shapes still delivered (fields that moved, expandable ids or objects)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from app.stripe.invoices import StripeInvoice
from app.stripe.payment_methods import StripeCard
from app.stripe.shapes import (
    StripeCheckoutCompleted,
    StripeCustomerObject,
    StripePaymentIntent,
    StripeReversal,
)
from app.stripe.subscriptions import StripeSubscriptionState

T0, T1 = 1772323200, 1774915200


def _invoice_pinned() -> dict[str, Any]:
    """An invoice as API 2025-03-31 and later show it."""
    return {
        "id": "in_1", "object": "invoice", "customer": "cus_1", "status": "paid", "currency": "eur",
        "number": "MKT-7", "amount_due": 3190, "amount_paid": 3190, "subtotal": 2900, "total": 3190,
        "total_taxes": [{"amount": 290, "tax_behavior": "exclusive"}],
        "created": T0, "period_start": T0, "period_end": T1,
        "status_transitions": {"finalized_at": T0 + 60, "paid_at": T0 + 120},
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1"}},
        "customer_name": "Alice", "customer_address": {"country": "DE"}, "due_date": None,
        "lines": {"object": "list", "has_more": False, "data": [
            {
                "id": "il_1", "object": "line_item", "amount": 2900, "currency": "eur", "quantity": 1,
                "description": "1 x Pro", "period": {"start": T0, "end": T1},
                "pricing": {"type": "price_details", "price_details": {"price": "price_pro"},
                            "unit_amount_decimal": "2900"},
                "taxes": [{"amount": 290}],
                "parent": {"type": "subscription_item_details",
                           "subscription_item_details": {"subscription": "sub_1", "proration": True}},
                "metadata": {"plan_id": "p1"},
            }
        ]},
    }  # fmt: skip


def _invoice_before_2025_03_31() -> dict[str, Any]:
    """The same invoice as older API versions showed it (and as events made with them still carry)."""
    pinned = _invoice_pinned()
    line = pinned["lines"]["data"][0]
    old_line = {key: value for key, value in line.items() if key not in ("pricing", "taxes", "parent")} | {
        "price": {"id": "price_pro", "object": "price", "unit_amount_decimal": "2900"},
        "tax_amounts": [{"amount": 290, "inclusive": False}],
        "proration": True,
        "subscription": "sub_1",
    }
    old = {key: value for key, value in pinned.items() if key not in ("total_taxes", "parent")}
    return old | {
        "customer": {"id": "cus_1", "object": "customer"},
        "subscription": {"id": "sub_1", "object": "subscription"},
        "tax": 290,
        "total_tax_amounts": [{"amount": 290, "inclusive": False, "tax_rate": "txr_1"}],
        "lines": {**pinned["lines"], "data": [old_line]},
    }


@pytest.mark.parametrize("payload", [_invoice_pinned, _invoice_before_2025_03_31])
def test_an_invoice_parses_the_same_on_both_api_version_shapes(payload: Any) -> None:
    invoice = StripeInvoice.from_payload(payload())
    assert (invoice.id, invoice.customer, invoice.subscription, invoice.status) == (
        "in_1",
        "cus_1",
        "sub_1",
        "paid",
    )
    assert (invoice.subtotal, invoice.tax, invoice.total, invoice.currency) == (2900, 290, 3190, "eur")
    assert invoice.paid_at == datetime.fromtimestamp(T0 + 120, tz=UTC)
    assert invoice.as_of == T0 + 120
    assert (invoice.customer_name, invoice.customer_address) == ("Alice", {"country": "DE"})
    [line] = invoice.lines
    assert (line.id, line.price_id, line.subscription, line.proration) == ("il_1", "price_pro", "sub_1", True)
    assert (line.amount, line.tax, line.unit_amount_decimal) == (2900, 290, Decimal(2900))
    assert (line.period_start, line.period_end) == (
        datetime.fromtimestamp(T0, tz=UTC), datetime.fromtimestamp(T1, tz=UTC)
    )  # fmt: skip
    assert line.metadata == {"plan_id": "p1"}


def test_an_invoice_taxed_only_in_total_tax_amounts_counts_that_tax() -> None:
    payload = {k: v for k, v in _invoice_before_2025_03_31().items() if k != "tax"}
    assert StripeInvoice.from_payload(payload).tax == 290


def test_an_invoice_whose_lines_stripe_embedded_in_part_says_so() -> None:
    payload = _invoice_pinned()
    payload["lines"]["has_more"] = True
    assert StripeInvoice.from_payload(payload).more_lines is True
    assert StripeInvoice.from_payload(_invoice_pinned()).more_lines is False


def _subscription_pinned() -> dict[str, Any]:
    return {
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "created": T0,
        "cancel_at_period_end": False, "canceled_at": None, "ended_at": None, "trial_end": None,
        "currency": "eur", "latest_invoice": "in_1", "metadata": {"subscription_id": "s1"},
        "items": {"object": "list", "data": [
            {"id": "si_1", "current_period_start": T0, "current_period_end": T1, "quantity": 1,
             "price": {"id": "price_pro", "object": "price", "currency": "eur", "unit_amount": 2900}},
        ]},
    }  # fmt: skip


def _subscription_before_2025_03_31() -> dict[str, Any]:
    """Periods on the subscription, the item's price as a legacy plan, objects expanded."""
    pinned = _subscription_pinned()
    item = {
        "id": "si_1",
        "quantity": 1,
        "plan": {"id": "price_pro", "object": "plan", "currency": "eur", "amount": 2900},
    }
    old = {k: v for k, v in pinned.items() if k != "currency"}
    return old | {
        "customer": {"id": "cus_1", "object": "customer"},
        "latest_invoice": {"id": "in_1", "object": "invoice"},
        "current_period_start": T0,
        "current_period_end": T1,
        "items": {"object": "list", "data": [item]},
    }


@pytest.mark.parametrize("payload", [_subscription_pinned, _subscription_before_2025_03_31])
def test_a_subscription_parses_the_same_on_both_api_version_shapes(payload: Any) -> None:
    state = StripeSubscriptionState.from_payload(payload())
    assert (state.id, state.status, state.customer, state.item_id, state.price_id) == (
        "sub_1", "active", "cus_1", "si_1", "price_pro"
    )  # fmt: skip
    assert (state.current_period_start, state.current_period_end) == (
        datetime.fromtimestamp(T0, tz=UTC), datetime.fromtimestamp(T1, tz=UTC)
    )  # fmt: skip
    assert (state.created, state.latest_invoice, state.metadata) == (T0, "in_1", {"subscription_id": "s1"})
    assert (state.currency, state.fixed_amount) == ("eur", 2900)


@pytest.mark.parametrize("default", ["pm_1", {"id": "pm_1", "object": "payment_method"}])
def test_a_customer_names_its_default_card_as_an_id_or_an_expanded_object(default: Any) -> None:
    settings = {"default_payment_method": default}
    payload = {
        "id": "cus_1",
        "email": "a@example.com",
        "invoice_settings": settings,
        "metadata": {"consumer_id": "c1"},
    }
    customer = StripeCustomerObject.from_payload(payload)
    assert customer == StripeCustomerObject("cus_1", "a@example.com", "pm_1", {"consumer_id": "c1"})


@pytest.mark.parametrize("subscription", ["sub_1", {"id": "sub_1", "object": "subscription"}])
def test_a_checkout_session_names_its_subscription_as_an_id_or_an_expanded_object(subscription: Any) -> None:
    payload = {"id": "cs_1", "subscription": subscription, "client_reference_id": "s1", "metadata": {}}
    assert StripeCheckoutCompleted.from_payload(payload) == StripeCheckoutCompleted("cs_1", "sub_1", "s1", {})
    assert StripeCheckoutCompleted.from_payload({"id": "cs_2", "mode": "payment"}).subscription is None


def test_a_payment_intent_names_its_invoice_only_before_2025_03_31() -> None:
    assert StripePaymentIntent.from_payload({"id": "pi_1", "invoice": "in_1"}).invoice == "in_1"
    assert StripePaymentIntent.from_payload({"id": "pi_1"}).invoice is None


@pytest.mark.parametrize("expanded", [False, True])
def test_a_refund_names_its_payment_as_ids_or_expanded_objects(expanded: bool) -> None:
    charge: Any = {"id": "ch_1", "object": "charge"} if expanded else "ch_1"
    intent: Any = {"id": "pi_1", "object": "payment_intent"} if expanded else "pi_1"
    payload = {"id": "re_1", "status": "succeeded", "amount": 300, "currency": "usd", "charge": charge}
    payload["payment_intent"] = intent
    assert StripeReversal.refund(payload) == StripeReversal(
        "re_1", "succeeded", 300, "usd", "ch_1", "pi_1", None
    )


def test_a_dispute_of_an_old_charge_names_only_the_charge_and_opens_as_needing_a_response() -> None:
    dispute = StripeReversal.dispute({"id": "dp_1", "amount": 500, "currency": "usd", "charge": "ch_1"})
    assert (dispute.status, dispute.charge, dispute.payment_intent) == ("needs_response", "ch_1", None)


def test_a_payment_method_without_card_details_parses_with_none() -> None:
    card = StripeCard.from_payload({"id": "pm_1", "type": "card", "card": {"brand": "visa", "last4": "4242",
                                    "exp_month": 12, "exp_year": 2030}})  # fmt: skip
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 12, 2030)
    assert StripeCard.from_payload({"id": "pm_2", "type": "sepa_debit"}).brand is None


def test_a_proration_line_made_by_an_invoice_item_names_its_subscription_and_proration() -> None:
    """Since 2025-03-31 a plan change's prorations are invoice items: their lines say so under
    `parent.invoice_item_details`, not `subscription_item_details`."""
    payload = _invoice_pinned()
    line = payload["lines"]["data"][0]
    line["parent"] = {
        "type": "invoice_item_details",
        "invoice_item_details": {"invoice_item": "ii_1", "proration": True, "subscription": "sub_1"},
    }
    [parsed] = StripeInvoice.from_payload(payload).lines
    assert (parsed.subscription, parsed.proration) == ("sub_1", True)
