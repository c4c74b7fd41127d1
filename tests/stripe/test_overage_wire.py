"""Overage through the API's meter on the wire: the graduated metered price a plan version gets,
and the second subscription item that subscribing, changing plan and Stripe's snapshots carry."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.models import Subscription, UsageRecord
from app.stripe.subscriptions import StripeSubscriptionState
from tests.support import rows
from tests.support.journeys import (
    Auth,
    create_plan,
    new_api_id,
    registered_consumer,
    subscribe,
    subscribe_through_checkout,
    upgrade,
)
from tests.support.stripe_wire import MONTH, NOW, consumer_with_card, form_of, wire_subscription

METER = {"id": "mtr_wire", "object": "billing.meter", "event_name": "api_calls_x", "status": "active"}


def item(item_id: str, price_id: str, usage_type: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "subscription_item",
        "current_period_start": NOW,
        "current_period_end": NOW + MONTH,
        "quantity": 1,
        "price": {
            "id": price_id,
            "object": "price",
            "currency": "usd",
            "unit_amount": 2900 if usage_type == "licensed" else None,
            "recurring": {"interval": "month", "usage_type": usage_type, "meter": None},
        },
    }


def with_items(*items: dict[str, Any]) -> dict[str, Any]:
    return wire_subscription("active", items={"object": "list", "data": list(items)})


BOTH_ITEMS = (item("si_wire", "price_wire_1", "licensed"), item("si_over", "price_wire_2", "metered"))
HARD_LIMIT = {"monthly_price": "49", "call_limit": 5000}


async def _stored(engine: AsyncEngine, subscription_id: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(Subscription).filter_by(id=subscription_id))).one()


@pytest.mark.parametrize(
    ("currency", "monthly", "overage", "sent"),
    [("usd", "29", "0.002", "0.2"), ("jpy", "3000", "0.5", "0.5"), ("jpy", "3000", "3", "3")],
)
async def test_an_overage_plan_gets_a_graduated_metered_price_on_the_apis_meter(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    currency: str,
    monthly: str,
    overage: str,
    sent: str,
) -> None:
    meters = stripe_api.post("/v1/billing/meters").respond(200, json=METER)
    plan = await create_plan(
        wire,
        auth("creator"),
        new_api_id(),
        currency=currency,
        monthly_price=monthly,
        call_limit=1000,
        overage_price_per_call=overage,
    )
    prices = [call.request for call in stripe_api.calls if call.request.url.path == "/v1/prices"]
    assert len(prices) == 2
    assert meters.call_count == 1
    tiered = form_of(prices[1])
    assert tiered["billing_scheme"] == ["tiered"]
    assert tiered["tiers_mode"] == ["graduated"]
    assert (tiered["tiers[0][up_to]"], tiered["tiers[0][unit_amount_decimal]"]) == (["1000"], ["0"])
    # Minor units per call: 0.002 USD is 0.2 cents; JPY has no minor unit.
    assert (tiered["tiers[1][up_to]"], tiered["tiers[1][unit_amount_decimal]"]) == (["inf"], [sent])
    assert tiered["recurring[usage_type]"] == ["metered"]
    assert tiered["recurring[meter]"] == ["mtr_wire"]
    assert tiered["currency"] == [currency]
    assert "unit_amount_decimal" not in tiered
    assert "tiers[0][unit_amount]" not in tiered
    assert prices[1].headers["Idempotency-Key"] == f"overage-price-create:{plan['id']}:v1"


async def test_subscribing_to_an_overage_plan_adds_its_metered_item_and_mirrors_it(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    stripe_api.post("/v1/billing/meters").respond(200, json=METER)
    answer = with_items(
        item("si_wire", "price_wire_1", "licensed"), item("si_over", "price_wire_2", "metered")
    )
    route = stripe_api.post("/v1/subscriptions").respond(200, json=answer)
    plan = await create_plan(
        wire, auth("creator"), new_api_id(), call_limit=1000, overage_price_per_call="0.01"
    )
    headers = await consumer_with_card(wire, auth)
    response = await subscribe(wire, headers, plan)
    assert response.status_code == 201, response.text
    sent = form_of(route.calls.last.request)
    assert (sent["items[0][price]"], sent["items[1][price]"]) == (["price_wire_1"], ["price_wire_2"])
    assert "items[1][quantity]" not in sent  # a metered item takes no quantity
    stored = await _stored(engine, response.json()["id"])
    assert (stored.stripe_subscription_item_id, stored.stripe_overage_item_id) == ("si_wire", "si_over")
    assert stored.unmatched_stripe_price_id is None


@dataclass
class PlanChange:
    """A consumer subscribed on the wire to an overage plan of an API that has a second plan."""

    wire: httpx.AsyncClient
    headers: dict[str, str]
    subscription_id: str
    overage: dict[str, Any]
    other: dict[str, Any]

    async def change(self) -> httpx.Response:
        """Move to the other plan (the metering service has no usage to add)."""
        with respx.mock(assert_all_called=False) as metering:
            metering.route(host="metering.test").respond(404)
            metering.route(host="api.stripe.com").pass_through()
            return await upgrade(self.wire, self.headers, self.subscription_id, self.other)


async def subscribed_for_a_change(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    other: dict[str, Any],
    *,
    items: tuple[dict[str, Any], ...] = BOTH_ITEMS,
    before_subscribing: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> PlanChange:
    """An overage plan and a plan on `other`'s terms for one API, and a consumer with a card
    subscribed to the first, Stripe answering with `items`."""
    stripe_api.post("/v1/billing/meters").respond(200, json=METER)
    stripe_api.post("/v1/subscriptions").respond(200, json=with_items(*items))
    creator, api_id = auth("creator"), new_api_id()
    overage = await create_plan(wire, creator, api_id, call_limit=1000, overage_price_per_call="0.01")
    target = await create_plan(wire, creator, api_id, **other)
    if before_subscribing is not None:
        await before_subscribing(overage)
    headers = await consumer_with_card(wire, auth)
    created = await subscribe(wire, headers, overage)
    assert created.status_code == 201, created.text
    return PlanChange(wire, headers, created.json()["id"], overage, target)


async def test_changing_from_an_overage_plan_to_a_hard_limit_plan_deletes_the_metered_item(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    story = await subscribed_for_a_change(wire, stripe_api, auth, HARD_LIMIT)
    update = stripe_api.post("/v1/subscriptions/sub_wire").respond(
        200, json=with_items(item("si_wire", "price_wire_3", "licensed"))
    )
    response = await story.change()
    assert response.status_code == 200, response.text
    sent = form_of(update.calls.last.request)
    assert (sent["items[0][id]"], sent["items[0][price]"]) == (["si_wire"], ["price_wire_3"])
    assert (sent["items[1][id]"], sent["items[1][deleted]"]) == (["si_over"], ["true"])
    assert sent["proration_behavior"] == ["always_invoice"]
    # A pending update may not delete an item: the change is paid at once or not made.
    assert sent["payment_behavior"] == ["error_if_incomplete"]
    stored = await _stored(engine, story.subscription_id)
    assert (stored.stripe_overage_item_id, stored.pricing_plan_id.hex) == (
        None,
        story.other["id"].replace("-", ""),
    )


async def test_a_declined_change_that_deletes_the_metered_item_is_402_and_keeps_the_plan(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    story = await subscribed_for_a_change(wire, stripe_api, auth, HARD_LIMIT)
    declined = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
        }
    }
    stripe_api.post("/v1/subscriptions/sub_wire").respond(402, json=declined)
    response = await story.change()
    assert response.status_code == 402, response.text  # as any card error Stripe answers a change with
    body = response.json()
    assert (body["code"], body["error"]) == ("card_declined", "Your card has insufficient funds.")
    stored = await _stored(engine, story.subscription_id)
    assert stored.stripe_overage_item_id == "si_over"
    assert str(stored.pricing_plan_id) == story.overage["id"]


async def legacy_with_calls(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine, calls: int
) -> PlanChange:
    """A subscription made before the overage meter item (1,000 calls included, 1 cent past them)
    with `calls` recorded in its period, about to change to a plan at 2 cents past them."""

    async def made_before_the_meter_item(plan: dict[str, Any]) -> None:
        await rows.made_before_the_overage_meter_item(engine, plan["id"])

    story = await subscribed_for_a_change(
        wire,
        stripe_api,
        auth,
        {"monthly_price": "29", "call_limit": 1000, "overage_price_per_call": "0.02"},
        items=(item("si_wire", "price_wire_1", "licensed"),),
        before_subscribing=made_before_the_meter_item,
    )
    await record_calls(engine, story, NOW + 86400, calls)
    return story


async def record_calls(engine: AsyncEngine, story: PlanChange, at: int, calls: int) -> None:
    """`calls` recorded for the story's subscription in the hour from `at`."""
    start = datetime.fromtimestamp(at, UTC)
    await rows.add(
        engine,
        UsageRecord(
            subscription_id=uuid.UUID(story.subscription_id),
            window_start=start,
            window_end=start + timedelta(hours=1),
            quantity=calls,
            successful_calls=calls,
            failed_calls=0,
        ),
    )


def stripe_for_a_change(
    stripe_api: respx.MockRouter, listed: list[dict[str, Any]]
) -> tuple[respx.Route, respx.Route]:
    """Stripe for a change to the hard-limit plan: its invoice items (`listed`), and the routes
    that list them and that add one."""
    listing = stripe_api.get("/v1/invoiceitems").respond(
        200, json={"object": "list", "url": "/v1/invoiceitems", "has_more": False, "data": listed}
    )
    added = stripe_api.post("/v1/invoiceitems").respond(200, json={"id": "ii_new", "object": "invoiceitem"})
    stripe_api.post("/v1/subscriptions/sub_wire").respond(
        200, json=with_items(item("si_wire", "price_wire_3", "licensed"))
    )
    return listing, added


def mid_period() -> AbstractContextManager[clock.Clock]:
    """Business time three days into the wire subscription's period (it ends at NOW + MONTH)."""
    return clock.use(clock.ManualClock(datetime.fromtimestamp(NOW + 3 * 86400, UTC)))


def overage_item(
    story: PlanChange, kind: str, quantity: int, invoice: dict[str, Any] | None
) -> dict[str, Any]:
    """An overage invoice item of the story's period as Stripe lists it (`invoice` expanded)."""
    period_start = datetime.fromtimestamp(NOW, UTC).isoformat()
    return {
        "id": f"ii_{kind}",
        "object": "invoiceitem",
        "customer": "cus_wire",
        "invoice": invoice,
        "quantity": quantity,
        "metadata": {"subscription_id": story.subscription_id, "period_start": period_start, "kind": kind},
    }


@pytest.mark.parametrize(
    ("close_line_listed", "at"),
    [
        # The renewal draft's close line holds the 200 calls; our row still shows that period.
        (True, NOW + 3 * 86400),
        # Stripe has renewed, its draft not made yet and its update not processed: the close line
        # will bill the period.
        (False, NOW + MONTH + 3600),
    ],
)
async def test_a_change_never_bills_again_the_overage_the_periods_close_line_bills(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    engine: AsyncEngine,
    close_line_listed: bool,
    at: int,
) -> None:
    story = await legacy_with_calls(wire, stripe_api, auth, engine, 1200)
    draft = {"id": "in_renewal", "object": "invoice", "status": "draft"}
    close_line = [overage_item(story, "overage", 200, draft)] if close_line_listed else []
    _listed, pending = stripe_for_a_change(stripe_api, close_line)
    with clock.use(clock.ManualClock(datetime.fromtimestamp(at, UTC))):
        response = await story.change()
    assert response.status_code == 200, response.text
    assert pending.call_count == 0


async def test_overage_items_on_a_voided_invoice_are_billed_again_and_older_periods_are_not_listed(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    story = await legacy_with_calls(wire, stripe_api, auth, engine, 1200)
    # An earlier change's item was on its invoice, which Stripe voided (the change was declined).
    voided = {"id": "in_declined", "object": "invoice", "status": "void"}
    listed, added = stripe_for_a_change(
        stripe_api, [overage_item(story, "overage_before_change", 200, voided)]
    )
    with mid_period():
        response = await story.change()
    assert response.status_code == 200, response.text
    assert form_of(added.calls.last.request)["quantity"] == ["200"]
    sent = listed.calls.last.request.url.params
    assert (sent["customer"], sent["created[gte]"]) == ("cus_wire", str(NOW))
    assert [v for k, v in sent.multi_items() if k.startswith("expand")] == ["data.invoice"]


async def test_a_change_retried_after_stripe_failed_it_bills_each_call_past_the_included_once(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    story = await legacy_with_calls(wire, stripe_api, auth, engine, 1200)
    made: dict[str, dict[str, Any]] = {}  # Stripe's invoice items, by the idempotency key made with

    def add_item(request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if key not in made:  # a repeated key gets the first answer back, as at Stripe
            form = form_of(request)
            kind = form["metadata[kind]"][0]
            made[key] = overage_item(story, kind, int(form["quantity"][0]), None) | {"id": f"ii_{len(made)}"}
        return httpx.Response(200, json=made[key])

    stripe_api.get("/v1/invoiceitems").mock(
        side_effect=lambda _: httpx.Response(
            200,
            json={
                "object": "list",
                "url": "/v1/invoiceitems",
                "has_more": False,
                "data": list(made.values()),
            },
        )
    )
    stripe_api.post("/v1/invoiceitems").mock(side_effect=add_item)
    failing = True
    failure = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
    changed = with_items(item("si_wire", "price_wire_3", "licensed"))
    stripe_api.post("/v1/subscriptions/sub_wire").mock(
        side_effect=lambda _: (
            httpx.Response(500, json=failure) if failing else httpx.Response(200, json=changed)
        )
    )
    with mid_period():
        first = await story.change()
        assert first.status_code >= 500, first.text  # the item was made, the change was not
        await record_calls(engine, story, NOW + 2 * 86400, 100)
        failing = False
        retried = await story.change()
    assert retried.status_code == 200, retried.text
    # 1,300 calls: the 200 past the included ones billed before the failure, the 100 since on the retry.
    assert sorted(i["quantity"] for i in made.values()) == [100, 200]


async def test_a_change_of_a_subscription_without_the_metered_item_first_bills_its_overage_as_a_pending_item(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth, engine: AsyncEngine
) -> None:
    story = await legacy_with_calls(wire, stripe_api, auth, engine, 1200)
    listed = stripe_api.get("/v1/invoiceitems").respond(
        200, json={"object": "list", "url": "/v1/invoiceitems", "has_more": False, "data": []}
    )
    pending = stripe_api.post("/v1/invoiceitems").respond(
        200, json={"id": "ii_wire", "object": "invoiceitem", "invoice": None, "quantity": 200}
    )
    update = stripe_api.post("/v1/subscriptions/sub_wire").respond(
        200,
        json=with_items(
            item("si_wire", "price_wire_3", "licensed"), item("si_over", "price_wire_4", "metered")
        ),
    )
    stored_before = await _stored(engine, story.subscription_id)
    with mid_period():
        response = await story.change()
    assert response.status_code == 200, response.text
    assert listed.calls.last.request.url.params["customer"] == "cus_wire"
    sent = form_of(pending.calls.last.request)
    period_start = datetime.fromtimestamp(NOW, UTC).isoformat()
    assert sent == {
        "customer": ["cus_wire"],
        "subscription": ["sub_wire"],
        "currency": ["usd"],
        "description": ["Overage until a plan change: 200 calls past the 1000 included"],
        "quantity": ["200"],
        "unit_amount_decimal": ["1"],  # 0.01 USD a call, the plan the calls were made on
        "metadata[subscription_id]": [story.subscription_id],
        "metadata[period_start]": [period_start],
        "metadata[kind]": ["overage_before_change"],
    }
    changed_at = int(stored_before.updated_at.timestamp() * 1_000_000)
    assert pending.calls.last.request.headers["Idempotency-Key"] == (
        f"overage-change:{story.subscription_id}:{changed_at}:{NOW}:0"
    )
    # Before the change, so that the invoice Stripe makes for the change carries it.
    sent_in_order = [(call.request.method, call.request.url.path) for call in stripe_api.calls]
    assert sent_in_order.index(("POST", "/v1/invoiceitems")) < sent_in_order.index(
        ("POST", "/v1/subscriptions/sub_wire")
    )
    assert form_of(update.calls.last.request)["items[1][price]"] == ["price_wire_4"]
    assert (await _stored(engine, story.subscription_id)).stripe_overage_item_id == "si_over"


async def test_checkout_for_an_overage_plan_adds_the_metered_price_as_a_line_without_quantity(
    wire: httpx.AsyncClient, stripe_api: respx.MockRouter, auth: Auth
) -> None:
    stripe_api.post("/v1/billing/meters").respond(200, json=METER)
    route = stripe_api.post("/v1/checkout/sessions").respond(
        200,
        json={
            "id": "cs_test_over",
            "object": "checkout.session",
            "url": "https://checkout.stripe.com/c/pay/x",
        },
    )
    plan = await create_plan(
        wire, auth("creator"), new_api_id(), call_limit=1000, overage_price_per_call="0.01"
    )
    response = await subscribe_through_checkout(wire, await registered_consumer(wire, auth), plan)
    assert response.status_code == 201, response.text
    sent = form_of(route.calls.last.request)
    assert (sent["line_items[0][price]"], sent["line_items[0][quantity]"]) == (["price_wire_1"], ["1"])
    assert sent["line_items[1][price]"] == ["price_wire_2"]
    assert "line_items[1][quantity]" not in sent


@pytest.mark.parametrize("metered_first", [False, True])
def test_the_plan_item_is_the_licensed_one_and_the_overage_item_the_metered_one(metered_first: bool) -> None:
    items = [item("si_plan", "price_plan", "licensed"), item("si_over", "price_over", "metered")]
    state = StripeSubscriptionState.from_payload(with_items(*(items[::-1] if metered_first else items)))
    assert (state.item_id, state.price_id) == ("si_plan", "price_plan")
    assert (state.overage_item_id, state.overage_price_id) == ("si_over", "price_over")
    assert state.fixed_amount == 2900


def test_a_single_metered_item_is_the_plans_own_price() -> None:
    state = StripeSubscriptionState.from_payload(with_items(item("si_ppu", "price_ppu", "metered")))
    assert (state.item_id, state.price_id, state.overage_item_id) == ("si_ppu", "price_ppu", None)
