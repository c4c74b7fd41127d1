"""Prices Stripe can bill as we mean them: tax-exclusive (creators never earn on tax), and amounts in
three-decimal currencies that Stripe accepts (the last digit 0) or a 422 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.money import THREE_DECIMAL, chargeable_problem, is_chargeable
from tests.support import rows
from tests.support.auth import Auth
from tests.support.journeys import create_plan, new_api_id
from tests.support.stripe_side import price_of_plan
from tests.support.stripe_wire import form_of

THREE_DECIMALS = sorted(THREE_DECIMAL)


@pytest.mark.parametrize(
    "terms",
    [{"type": "subscription", "monthly_price": "29"}, {"type": "pay_per_use", "price_per_call": "0.002"}],
)
async def test_plan_prices_are_sent_to_stripe_tax_exclusive(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, terms: dict[str, Any]
) -> None:
    stripe_api.post(url__regex=r"/v1/prices/price_wire_\d+$").respond(
        200, json={"id": "price_wire_1", "object": "price", "active": False}
    )
    if terms["type"] == "pay_per_use":
        stripe_api.post("/v1/billing/meters").respond(200, json={"id": "mtr_wire", "object": "billing.meter"})
    creator = auth("creator")
    plan = await create_plan(wire, creator, new_api_id(), **terms)
    # A new price version is another price: tax-exclusive too.
    changed = {"monthly_price": "39"} if terms["type"] == "subscription" else {"price_per_call": "0.003"}
    response = await wire.put(
        f"/api/v1/apis/{plan['api_id']}/plans/{plan['id']}", json=changed, headers=creator
    )
    assert response.status_code == 200, response.text

    sent = [form_of(call.request) for call in stripe_api.calls if call.request.url.path == "/v1/prices"]
    assert len(sent) == 2
    assert [form["tax_behavior"] for form in sent] == [["exclusive"], ["exclusive"]]


async def test_the_dev_emulator_keeps_a_prices_tax_behavior(
    client: httpx.AsyncClient, engine: AsyncEngine, auth: Auth, settings: Settings
) -> None:
    plan = await create_plan(client, auth("creator"), new_api_id(), monthly_price="12.50")
    price_id = await price_of_plan(engine, plan["id"])
    key = settings.stripe_secret_key.get_secret_value()
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base), auth=(key, "")) as stripe:
        price = (await stripe.get(f"/v1/prices/{price_id}")).json()
        refused = await stripe.post(
            "/v1/prices",
            data={
                "currency": "usd",
                "unit_amount": "100",
                "product": price["product"],
                "tax_behavior": "sometimes",
            },
        )

    assert (price["tax_behavior"], price["unit_amount"]) == ("exclusive", 1250)
    assert refused.status_code == 400


@pytest.mark.parametrize("currency", THREE_DECIMALS)
async def test_three_decimal_plan_prices_not_ending_in_zero_are_422_naming_the_field(
    client: httpx.AsyncClient, auth: Auth, currency: str
) -> None:
    creator, api_id = auth("creator"), new_api_id()
    body = {"name": "Gulf", "type": "subscription", "currency": currency, "monthly_price": "5.125"}

    refused = await client.post(f"/api/v1/apis/{api_id}/plans", json=body, headers=creator)
    plan = await create_plan(client, creator, api_id, currency=currency, monthly_price="5.12")
    changed = await client.put(
        f"/api/v1/apis/{api_id}/plans/{plan['id']}", json={"monthly_price": "5.121"}, headers=creator
    )

    for response in (refused, changed):
        assert response.status_code == 422, response.text
        assert [d["field"] for d in response.json()["details"]] == ["monthly_price"]
        assert "multiples of 0.010" in response.json()["error"]
    assert (plan["monthly_price"], plan["currency"]) == (5.12, currency)


async def test_three_decimal_custom_invoice_lines_not_ending_in_zero_are_422_naming_the_line(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    alice = rows.consumer("alice")
    await rows.add(engine, alice)
    body = {
        "consumer_id": str(alice.id),
        "currency": "kwd",
        "lines": [
            {"description": "Workshop", "quantity": 1, "unit_amount": 150_000},
            {"description": "Support", "quantity": 3, "unit_amount": 12_345},
        ],
    }

    response = await client.post("/api/v1/admin/invoices", json=body, headers=auth("admin"))

    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["details"]] == ["lines.1.unit_amount"]


def test_stripe_accepts_three_decimal_amounts_in_steps_of_ten_and_others_in_single_units() -> None:
    for currency in THREE_DECIMALS:
        assert is_chargeable(5120, currency)
        assert not is_chargeable(5124, currency)
        assert chargeable_problem(5124, currency) == (
            f"{currency.upper()} amounts must be whole multiples of 0.010"
            " (Stripe charges the last digit as 0)"
        )
    assert is_chargeable(5124, "usd")
    assert is_chargeable(7, "jpy")
    assert chargeable_problem(5124, "eur") is None
