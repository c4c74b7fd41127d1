"""The emulator bills a plan with overage as Stripe does: a licensed item and a graduated metered
item on one subscription, renewed together on one invoice, the tiers priced like Stripe's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.dev.stripe_extensions import tiered_amount
from app.stripe import StripeGateway
from tests.support import emulator
from tests.support.emulator import DAY, HOUR


async def _prices(stripe: httpx.AsyncClient, currency: str, monthly: int, per_call: str) -> tuple[str, str]:
    """A licensed monthly price and a graduated metered price on a new meter: 1,000 calls at 0,
    then `per_call` minor units each."""
    product = await emulator.ok(await stripe.post("/v1/products", data={"name": "API"}))
    meter = await emulator.ok(
        await stripe.post("/v1/billing/meters", data={"event_name": "api_calls", "display_name": "Calls"})
    )
    common = {"product": product["id"], "currency": currency, "recurring[interval]": "month"}
    licensed = await emulator.ok(await stripe.post("/v1/prices", data={**common, "unit_amount": monthly}))
    tiered = await emulator.ok(
        await stripe.post(
            "/v1/prices",
            data={
                **common,
                "recurring[usage_type]": "metered",
                "recurring[meter]": meter["id"],
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers[0][up_to]": "1000",
                "tiers[0][unit_amount_decimal]": "0",
                "tiers[1][up_to]": "inf",
                "tiers[1][unit_amount_decimal]": per_call,
            },
        )
    )
    assert (tiered["billing_scheme"], tiered["tiers_mode"], tiered["unit_amount"]) == (
        "tiered",
        "graduated",
        None,
    )
    return licensed["id"], tiered["id"]


async def _calls(stripe: httpx.AsyncClient, customer: str, at: int, value: int, tag: str) -> None:
    event = {
        "event_name": "api_calls",
        "identifier": f"calls-{customer}-{tag}",
        "timestamp": str(at),
        "payload[stripe_customer_id]": customer,
        "payload[value]": str(value),
    }
    await emulator.ok(await stripe.post("/v1/billing/meter_events", data=event))


async def _two_item_subscription(
    stripe: httpx.AsyncClient, currency: str, monthly: int, per_call: str
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    clock = await emulator.clock(stripe)
    customer = await emulator.customer(stripe, clock["id"])
    licensed, tiered = await _prices(stripe, currency, monthly, per_call)
    subscription = await emulator.ok(
        await stripe.post(
            "/v1/subscriptions",
            data={"customer": customer, "items[0][price]": licensed, "items[1][price]": tiered},
        )
    )
    return clock, customer, subscription


async def test_a_licensed_and_a_graduated_metered_item_renew_on_one_invoice_tiered_like_stripe(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock, customer, subscription = await _two_item_subscription(stripe_http, "jpy", 3000, "0.3")
    items = subscription["items"]["data"]
    assert [item["plan"]["usage_type"] for item in items] == ["licensed", "metered"]
    (first,) = await emulator.invoices(stripe_http, customer)
    assert (first["total"], first["status"]) == (3000, "paid")  # the metered item bills in arrears
    created = [
        e for e in (await stripe_http.get("/v1/events", params={"limit": 100})).json()["data"]
        if e["type"] == "customer.subscription.created" and e["data"]["object"]["id"] == subscription["id"]
    ]  # fmt: skip
    assert [len(e["data"]["object"]["items"]["data"]) for e in created] == [2]

    start, end = subscription["current_period_start"], subscription["current_period_end"]
    await emulator.advance(stripe_http, clock["id"], start + 2 * DAY)
    await _calls(stripe_http, customer, start + DAY, 1200, "a")
    await _calls(stripe_http, customer, start + 2 * DAY - 1, 35, "b")
    await emulator.advance(stripe_http, clock["id"], end + 2 * HOUR)

    renewal = await emulator.latest(stripe_http, subscription["id"])
    lines = sorted((line["quantity"], line["amount"]) for line in renewal["lines"]["data"])
    # 1,235 calls: 1,000 at 0, then 235 at 0.3 yen = 70.5, rounded half up to 71 yen.
    assert lines == [(1, 3000), (1235, 71)]
    assert (renewal["total"], renewal["status"], renewal["currency"]) == (3071, "paid", "jpy")


async def test_deleting_the_metered_item_with_always_invoice_bills_its_usage_so_far_at_once(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock, customer, subscription = await _two_item_subscription(stripe_http, "usd", 2000, "1.5")
    plan_item, metered_item = (item["id"] for item in subscription["items"]["data"])
    start, end = subscription["current_period_start"], subscription["current_period_end"]
    half = start + (end - start) // 2
    await emulator.advance(stripe_http, clock["id"], half)
    await _calls(stripe_http, customer, start + DAY, 1100, "a")
    licensed = await emulator.price(stripe_http, 2000)

    changed = await emulator.ok(
        await stripe_http.post(
            f"/v1/subscriptions/{subscription['id']}",
            data={
                "items[0][id]": plan_item,
                "items[0][price]": licensed,
                "items[1][id]": metered_item,
                "items[1][deleted]": "true",
                "proration_behavior": "always_invoice",
            },
        )
    )
    assert [item["plan"]["id"] for item in changed["items"]["data"]] == [licensed]
    at_once = await emulator.latest(stripe_http, subscription["id"])
    usage = [line for line in at_once["lines"]["data"] if not line["proration"]]
    assert [(line["quantity"], line["amount"]) for line in usage] == [(1100, 150)]  # 100 x 1.5 cents
    assert at_once["status"] == "paid"

    await _calls(stripe_http, customer, half + HOUR, 500, "b")  # after the item is gone
    await emulator.advance(stripe_http, clock["id"], end + 2 * HOUR)
    renewal = await emulator.latest(stripe_http, subscription["id"])
    assert [(line["quantity"], line["amount"]) for line in renewal["lines"]["data"]] == [(1, 2000)]


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [(0, 0), (1000, 0), (1001, 1), (1003, 4), (2000, 1250), (2500, 1250 + 5 + 250)],
)
def test_graduated_tiers_price_each_tiers_units_rounded_half_up_plus_its_flat_amount(
    quantity: int, amount: int
) -> None:
    tiers: list[dict[str, Any]] = [
        {"up_to": 1000, "unit_amount_decimal": "0", "flat_amount_decimal": "0"},
        {"up_to": 2000, "unit_amount_decimal": "1.25", "flat_amount_decimal": "0"},
        {"up_to": None, "unit_amount_decimal": "0.5", "flat_amount_decimal": "5"},
    ]
    assert tiered_amount(tiers, "graduated", quantity) == amount


async def test_invoice_items_listed_since_a_moment_count_pending_ones_and_those_not_on_a_voided_invoice(
    stripe_http: httpx.AsyncClient, settings: Settings
) -> None:
    clock = await emulator.clock(stripe_http)
    # A card that attaches but is declined: the invoice stays open, and Stripe may void it.
    customer = await emulator.customer(stripe_http, clock["id"], card="pm_card_chargeCustomerFail")
    start = int(clock["frozen_time"])
    tagged = {"customer": customer, "currency": "usd", "unit_amount": "100", "metadata[kind]": "overage"}
    await emulator.ok(await stripe_http.post("/v1/invoiceitems", data={**tagged, "quantity": "3"}))
    declined = await emulator.ok(
        await stripe_http.post(
            "/v1/invoices",
            data={
                "customer": customer,
                "currency": "usd",
                "collection_method": "send_invoice",
                "days_until_due": 7,
            },
        )
    )
    on_it = {**tagged, "quantity": "5", "invoice": declined["id"]}
    await emulator.ok(await stripe_http.post("/v1/invoiceitems", data=on_it))
    await emulator.ok(await stripe_http.post(f"/v1/invoices/{declined['id']}/finalize"))
    await emulator.ok(await stripe_http.post(f"/v1/invoices/{declined['id']}/void"))
    await emulator.advance(stripe_http, clock["id"], start + 2 * DAY)
    await emulator.ok(await stripe_http.post("/v1/invoiceitems", data={**tagged, "quantity": "7"}))

    gateway = StripeGateway(settings)

    async def billed(since: int) -> int:
        moment = datetime.fromtimestamp(since, UTC)
        return await gateway.invoice_item_quantities(
            customer=customer, metadata={"kind": "overage"}, created_since=moment
        )

    assert await billed(start) == 3 + 7  # the 5 on the voided invoice are not billed
    assert await billed(start + DAY) == 7
