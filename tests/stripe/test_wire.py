"""The gateway's real wire calls, against respx answering in Stripe's documented shapes, for what
the emulator lacks: SCA, declines, proration previews, Checkout, the portal and retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PaymentMethod, Subscription
from tests.support.asgi import running
from tests.support.auth import Auth
from tests.support.journeys import (
    create_plan,
    new_api_id,
    on_cheaper_of_two,
    preview_upgrade,
    registered_consumer,
    subscribe,
    subscribe_through_checkout,
    upgrade,
)
from tests.support.settings import make_settings
from tests.support.stripe_wire import (
    MONTH,
    NOW,
    consumer_with_card,
    form_of,
    wire_customer,
    wire_payment_method,
    wire_subscription,
)


async def test_sca_needed_answers_incomplete_with_the_payment_intent_client_secret(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    route = stripe_api.post("/v1/subscriptions").respond(200, json=wire_subscription("incomplete"))
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["client_secret"]) == ("incomplete", "pi_wire_secret_abc")
    assert body["stripe_subscription_id"] == "sub_wire"
    sent = form_of(route.calls.last.request)
    assert sent["items[0][price]"] == ["price_wire_1"]
    assert sent["default_payment_method"] == ["pm_wire"]
    assert sent["payment_behavior"] == ["allow_incomplete"]
    assert sent["expand[0]"] == ["latest_invoice.confirmation_secret"]
    assert route.calls.last.request.headers["Idempotency-Key"] == f"sub-create:{body['id']}"


async def test_stripe_500_is_retried_with_the_same_idempotency_key(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    route = stripe_api.post("/v1/subscriptions").mock(
        side_effect=[
            httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}}),
            httpx.Response(200, json=wire_subscription("active")),
        ]
    )
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.status_code == 201, response.text
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert keys == [f"sub-create:{response.json()['id']}"] * 2
    assert response.json()["status"] == "active"


async def test_stripe_failing_on_subscribe_is_502_and_keeps_nothing(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    stripe_api.post("/v1/subscriptions").respond(500, json={"error": {"type": "api_error", "message": "x"}})
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.status_code == 502
    assert response.json()["code"] == "stripe_error"
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(Subscription))).scalar_one() == 0


async def test_card_declined_on_attach_is_402_with_stripes_reason_and_nothing_written(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    stripe_api.post("/v1/payment_methods/pm_declined/attach").respond(
        402,
        json={
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            }
        },
    )
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await registered_consumer(wire, auth)
    response = await subscribe(wire, headers, plan, payment_method_id="pm_declined")
    assert response.status_code == 402
    assert response.json()["error"] == "Your card has insufficient funds."
    assert response.json()["code"] == "card_declined"
    async with engine.connect() as connection:
        for table in (Subscription, PaymentMethod):
            assert (await connection.execute(select(func.count()).select_from(table))).scalar_one() == 0


async def test_trial_plan_sends_trial_days_and_mirrors_trialing(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    trial = wire_subscription("trialing", trial_end=NOW + 14 * 86400, latest_invoice=None)
    route = stripe_api.post("/v1/subscriptions").respond(200, json=trial)
    plan = await create_plan(wire, auth("creator"), new_api_id(), trial_period_days=14)
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.json()["status"] == "trial"
    assert response.json()["trial_end"].startswith("2026-")
    assert form_of(route.calls.last.request)["trial_period_days"] == ["14"]


async def test_upgrade_preview_reads_stripes_prorated_invoice(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    stripe_api.post("/v1/subscriptions").respond(200, json=wire_subscription("active"))
    preview = stripe_api.post("/v1/invoices/create_preview").respond(
        200,
        json={
            "id": "upcoming_in_1",
            "object": "invoice",
            "amount_due": 1934,
            "currency": "usd",
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": "il_1",
                        "object": "line_item",
                        "amount": -645,
                        "currency": "usd",
                        "description": "Unused time on Basic after 10 Feb 2026",
                        "period": {"start": NOW, "end": NOW + MONTH},
                        "parent": {"subscription_item_details": {"proration": True}},
                    },
                    {
                        "id": "il_2",
                        "object": "line_item",
                        "amount": 2579,
                        "currency": "usd",
                        "description": "Remaining time on Pro after 10 Feb 2026",
                        "period": {"start": NOW, "end": NOW + MONTH},
                        "parent": {"subscription_item_details": {"proration": True}},
                    },
                ],
            },
        },
    )
    headers, created, _basic, pro = await on_cheaper_of_two(wire, auth, ("10", "40"), "pm_wire")
    response = await preview_upgrade(wire, headers, created["id"], pro)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["amount_due"], body["currency"]) == (1934, "usd")
    assert [(line["amount"], line["proration"]) for line in body["lines"]] == [(-645, True), (2579, True)]
    sent = form_of(preview.calls.last.request)
    assert sent["subscription"] == ["sub_wire"]
    assert sent["subscription_details[items][0][id]"] == ["si_wire"]
    assert sent["subscription_details[items][0][price]"] == ["price_wire_2"]
    assert sent["subscription_details[proration_behavior]"] == ["always_invoice"]


async def test_upgrade_changes_the_item_price_with_immediate_proration(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    stripe_api.post("/v1/subscriptions").respond(200, json=wire_subscription("active"))
    update = stripe_api.post("/v1/subscriptions/sub_wire").respond(200, json=wire_subscription("active"))
    headers, created, _basic, pro = await on_cheaper_of_two(wire, auth, ("10", "40"), "pm_wire")
    response = await upgrade(wire, headers, created["id"], pro)
    assert response.status_code == 200, response.text
    assert response.json()["pricing_plan_id"] == pro["id"]
    sent = form_of(update.calls.last.request)
    assert sent["items[0][id]"] == ["si_wire"]
    assert sent["items[0][price]"] == ["price_wire_2"]
    assert sent["proration_behavior"] == ["always_invoice"]
    assert update.calls.last.request.headers["Idempotency-Key"].startswith(f"sub-change:{created['id']}:")


async def test_checkout_creates_an_incomplete_subscription_with_the_session_url(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    route = stripe_api.post("/v1/checkout/sessions").respond(
        200,
        json={
            "id": "cs_test_wire",
            "object": "checkout.session",
            "mode": "subscription",
            "status": "open",
            "customer": "cus_wire",
            "url": "https://checkout.stripe.com/c/pay/cs_test_wire",
        },
    )
    plan = await create_plan(wire, auth("creator"), new_api_id(), trial_period_days=7)
    headers = await registered_consumer(wire, auth)
    response = await subscribe_through_checkout(wire, headers, plan)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["checkout_url"]) == (
        "incomplete",
        "https://checkout.stripe.com/c/pay/cs_test_wire",
    )
    sent = form_of(route.calls.last.request)
    assert sent["mode"] == ["subscription"]
    assert sent["line_items[0][price]"] == ["price_wire_1"]
    assert sent["client_reference_id"] == [body["id"]]
    assert sent["subscription_data[trial_period_days]"] == ["7"]
    assert sent["subscription_data[metadata][subscription_id]"] == [body["id"]]
    async with engine.connect() as connection:
        stored = await connection.scalar(
            select(Subscription.stripe_checkout_session_id).where(Subscription.id == body["id"])
        )
    assert stored == "cs_test_wire"


async def test_checkout_without_urls_is_422_naming_the_field(wire: httpx.AsyncClient, auth: Auth) -> None:
    plan = await create_plan(wire, auth("creator"), new_api_id())
    headers = await registered_consumer(wire, auth)
    response = await subscribe(wire, headers, plan, checkout=True, cancel_url="https://m.example/c")
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "success_url"


async def test_portal_session_returns_stripes_url(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    route = stripe_api.post("/v1/billing_portal/sessions").respond(
        200,
        json={
            "id": "bps_wire",
            "object": "billing_portal.session",
            "customer": "cus_wire",
            "return_url": "https://market.example/account",
            "url": "https://billing.stripe.com/p/session/test_wire",
        },
    )
    headers = await registered_consumer(wire, auth)
    response = await wire.post(
        "/api/v1/consumers/portal-session",
        json={"return_url": "https://market.example/account"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"url": "https://billing.stripe.com/p/session/test_wire"}
    assert form_of(route.calls.last.request) == {
        "customer": ["cus_wire"],
        "return_url": ["https://market.example/account"],
    }


async def test_portal_session_needs_registration(wire: httpx.AsyncClient, auth: Auth) -> None:
    response = await wire.post(
        "/api/v1/consumers/portal-session",
        json={"return_url": "https://m.example/a"},
        headers=auth("consumer"),
    )
    assert response.status_code == 404
    assert json.loads(response.text)["code"] == "not_registered"


async def test_card_attached_but_refused_as_default_is_detached_again_and_not_stored(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    def update_customer(request: httpx.Request) -> httpx.Response:
        if "invoice_settings[default_payment_method]" not in form_of(request):
            return httpx.Response(200, json=wire_customer())  # registration setting the email
        return httpx.Response(
            400, json={"error": {"type": "invalid_request_error", "message": "No such PaymentMethod"}}
        )

    stripe_api.post("/v1/customers/cus_wire").mock(side_effect=update_customer)
    detach = stripe_api.post("/v1/payment_methods/pm_wire/detach").respond(200, json=wire_payment_method())
    headers = await registered_consumer(wire, auth)
    body = {"payment_method_id": "pm_wire"}
    response = await wire.post("/api/v1/payment-methods", json=body, headers=headers)
    assert response.status_code == 422
    assert detach.called
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(PaymentMethod))).scalar_one() == 0


@pytest.fixture(params=[True, False], ids=["stripe_tax", "no_tax"])
async def tax_wire(
    request: pytest.FixtureRequest, settings: Settings, engine: AsyncEngine, stripe_api: respx.MockRouter
) -> AsyncIterator[tuple[bool, httpx.AsyncClient]]:
    """The wired app with STRIPE_TAX_ENABLED on, then off."""
    tax: bool = request.param
    wired = make_settings(
        database_url=settings.database_url, redis_url=settings.redis_url, stripe_tax_enabled=tax
    )
    async with running(wired) as (_, http):
        yield tax, http


def _checkout_route(stripe_api: respx.MockRouter) -> respx.Route:
    return stripe_api.post("/v1/checkout/sessions").respond(
        200,
        json={
            "id": "cs_test_tax",
            "object": "checkout.session",
            "mode": "subscription",
            "status": "open",
            "customer": "cus_wire",
            "url": "https://checkout.stripe.com/c/pay/cs_test_tax",
        },
    )


async def test_card_subscriptions_and_upgrades_ask_for_automatic_tax_only_with_stripe_tax(
    tax_wire: tuple[bool, httpx.AsyncClient], stripe_api: respx.MockRouter, auth: Auth
) -> None:
    tax, client = tax_wire
    create = stripe_api.post("/v1/subscriptions").respond(200, json=wire_subscription("active"))
    update = stripe_api.post("/v1/subscriptions/sub_wire").respond(200, json=wire_subscription("active"))
    preview = stripe_api.post("/v1/invoices/create_preview").respond(
        200, json={"id": "upcoming_in", "object": "invoice", "amount_due": 0, "currency": "usd", "lines": {}}
    )
    headers, created, _basic, pro = await on_cheaper_of_two(client, auth, ("10", "40"), "pm_wire")
    previewed = await preview_upgrade(client, headers, created["id"], pro)
    upgraded = await upgrade(client, headers, created["id"], pro)

    assert (previewed.status_code, upgraded.status_code) == (200, 200)
    for route in (create, preview):
        sent = form_of(route.calls.last.request)
        if tax:
            assert sent["automatic_tax[enabled]"] == ["true"]
        else:
            assert not any(key.startswith("automatic_tax") for key in sent)
    # A plan change is a pending update, which takes no automatic_tax: the subscription keeps the
    # Stripe Tax setting it was created with.
    assert not any(key.startswith("automatic_tax") for key in form_of(update.calls.last.request))


async def test_checkout_always_collects_the_billing_address_and_asks_for_tax_only_with_stripe_tax(
    tax_wire: tuple[bool, httpx.AsyncClient], stripe_api: respx.MockRouter, auth: Auth
) -> None:
    tax, client = tax_wire
    route = _checkout_route(stripe_api)
    plan = await create_plan(client, auth("creator"), new_api_id())
    headers = await registered_consumer(client, auth)
    response = await subscribe_through_checkout(client, headers, plan)

    assert response.status_code == 201, response.text
    sent = form_of(route.calls.last.request)
    # Checkout collects the billing name and address (the invoices' bill-to, and what Stripe Tax
    # needs) and saves them on the existing customer.
    assert sent["billing_address_collection"] == ["required"]
    assert sent["customer_update[address]"] == ["auto"]
    assert sent["customer_update[name]"] == ["auto"]
    if tax:
        assert sent["automatic_tax[enabled]"] == ["true"]
    else:
        assert not any(key.startswith("automatic_tax") for key in sent)


@pytest.mark.parametrize(
    ("price_per_call", "currency", "sent"),
    [
        ("0.10", "usd", "10"),
        ("1", "usd", "100"),
        ("0.0015", "usd", "0.15"),
        ("0.00000001", "jpy", "0.00000001"),
    ],
)
@respx.mock
async def test_per_call_prices_reach_stripe_as_plain_decimal_digits(
    price_per_call: str, currency: str, sent: str
) -> None:
    from decimal import Decimal

    from app.money import minor_decimal
    from app.stripe import StripeGateway

    price = {
        "id": "price_wire", "object": "price", "product": "prod_wire", "currency": currency,
        "unit_amount_decimal": sent, "active": True, "recurring": {"interval": "month"},
    }  # fmt: skip
    route = respx.post("https://api.stripe.com/v1/prices").respond(200, json=price)
    gateway = StripeGateway(make_settings())
    await gateway.create_price(
        product="prod_wire",
        currency=currency,
        unit_amount_decimal=minor_decimal(Decimal(price_per_call), currency),
        nickname="n",
        metadata={},
        idempotency_key="k",
        meter="mtr_wire",
    )
    assert form_of(route.calls.last.request)["unit_amount_decimal"] == [sent]
