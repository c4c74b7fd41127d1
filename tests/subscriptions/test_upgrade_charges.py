"""A plan change charges what its preview showed, and a failed payment changes no plan: the
upgrade's wire calls against respx answering in Stripe's documented shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.models import Subscription
from tests.support.auth import Auth
from tests.support.journeys import create_plan, new_api_id, subscribe
from tests.support.stripe_wire import MONTH, NOW, consumer_with_card, form_of, wire_subscription

BASIC, PRO = 1000, 40000  # monthly, in cents
PERIOD_START, PERIOD_END = NOW, NOW + MONTH


def _prorated(at: int) -> int:
    """Stripe's prorated difference for moving from BASIC to PRO at `at` for the rest of the period."""
    return round((PRO - BASIC) * (PERIOD_END - at) / (PERIOD_END - PERIOD_START))


class ProratingStripe:
    """Prorates previews and price changes as of `proration_date`, or of its own now without one."""

    def __init__(self) -> None:
        self.charged: list[int] = []

    @staticmethod
    def _at(sent: dict[str, list[str]], field: str) -> int:
        return int(sent[field][0]) if field in sent else clock.timestamp()

    def preview(self, request: httpx.Request) -> httpx.Response:
        amount = _prorated(self._at(form_of(request), "subscription_details[proration_date]"))
        line = {"object": "line_item", "currency": "usd", "period": {"start": NOW, "end": PERIOD_END},
                "parent": {"subscription_item_details": {"proration": True}}}  # fmt: skip
        return httpx.Response(
            200,
            json={
                "id": "upcoming_in_wire", "object": "invoice", "amount_due": amount, "currency": "usd",
                "lines": {"object": "list", "data": [
                    {**line, "id": "il_credit", "amount": -BASIC, "description": "Unused time on Basic"},
                    {**line, "id": "il_charge", "amount": amount + BASIC,
                     "description": "Remaining time on Pro"},
                ]},
            },
        )  # fmt: skip

    def change(self, request: httpx.Request) -> httpx.Response:
        sent = form_of(request)
        amount = _prorated(self._at(sent, "proration_date"))
        self.charged.append(amount)
        changed = wire_subscription("active")
        changed["items"]["data"][0]["price"] = {"id": sent["items[0][price]"][0], "object": "price"}
        changed["latest_invoice"] = {
            "id": "in_change", "object": "invoice", "status": "paid", "amount_due": amount,
            "amount_paid": amount, "currency": "usd", "confirmation_secret": None,
        }  # fmt: skip
        return httpx.Response(200, json=changed)


async def _basic_subscriber(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    stripe_api.post("/v1/subscriptions").respond(200, json=wire_subscription("active"))
    creator = auth("creator")
    api_id = new_api_id()
    basic = await create_plan(wire, creator, api_id, name="Basic", monthly_price=str(BASIC // 100))
    pro = await create_plan(wire, creator, api_id, name="Pro", monthly_price=str(PRO // 100))
    headers = await consumer_with_card(wire, auth)
    created = await subscribe(wire, headers, basic)
    assert created.status_code == 201, created.text
    return headers, created.json(), basic, pro


async def test_an_upgrade_charges_exactly_the_amount_its_preview_showed(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
) -> None:
    stripe = ProratingStripe()
    preview_route = stripe_api.post("/v1/invoices/create_preview").mock(side_effect=stripe.preview)
    change_route = stripe_api.post("/v1/subscriptions/sub_wire").mock(side_effect=stripe.change)
    manual = clock.ManualClock(datetime.fromtimestamp(NOW + 10 * 86400, tz=UTC))
    with clock.use(manual):
        headers, created, _basic, pro = await _basic_subscriber(wire, stripe_api, auth)
        url = f"/api/v1/subscriptions/{created['id']}/upgrade"
        shown = await wire.get(f"{url}/preview", params={"new_pricing_plan_id": pro["id"]}, headers=headers)
        assert shown.status_code == 200, shown.text
        preview = shown.json()
        # The consumer reads the preview for a few minutes before confirming.
        manual.advance(timedelta(minutes=7))
        body = {"new_pricing_plan_id": pro["id"], "proration_date": preview["proration_date"]}
        upgraded = await wire.put(url, json=body, headers=headers)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["pricing_plan_id"] == pro["id"]
    assert stripe.charged == [preview["amount_due"]]
    # Prorated as of the confirmation instead, the charge would differ from what was shown.
    assert _prorated(NOW + 10 * 86400 + 7 * 60) != preview["amount_due"]
    shown_at = int(datetime.fromisoformat(preview["proration_date"]).timestamp())
    assert form_of(preview_route.calls.last.request)["subscription_details[proration_date]"] == [
        str(shown_at)
    ]
    sent = form_of(change_route.calls.last.request)
    assert sent["proration_date"] == [str(shown_at)]
    assert sent["proration_behavior"] == ["always_invoice"]
    key = change_route.calls.last.request.headers["Idempotency-Key"]
    assert key == f"sub-change:{created['id']}:price_wire_2:{shown_at}"


@pytest.mark.parametrize(
    "offset", [timedelta(minutes=-11), timedelta(minutes=1)], ids=["older_than_ten_minutes", "future"]
)
async def test_an_upgrade_with_a_stale_or_future_proration_date_is_422_naming_it(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    offset: timedelta,
) -> None:
    change_route = stripe_api.post("/v1/subscriptions/sub_wire").respond(
        200, json=wire_subscription("active")
    )
    headers, created, _basic, pro = await _basic_subscriber(wire, stripe_api, auth)
    when = (clock.now() + offset).isoformat()
    response = await wire.put(
        f"/api/v1/subscriptions/{created['id']}/upgrade",
        json={"new_pricing_plan_id": pro["id"], "proration_date": when},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["details"][0]["field"] == "proration_date"
    assert not change_route.called


def _pending_update(price: str) -> dict[str, Any]:
    return {
        "billing_cycle_anchor": None,
        "expires_at": NOW + 23 * 3600,
        "subscription_items": [{"id": "si_wire", "object": "subscription_item", "price": {"id": price}}],
        "trial_end": None,
        "trial_from_plan": None,
    }


async def _plan_of(engine: AsyncEngine, subscription_id: str) -> str:
    async with engine.connect() as connection:
        plan_id = await connection.scalar(
            select(Subscription.pricing_plan_id).where(Subscription.id == subscription_id)
        )
    return str(plan_id)


DECLINED = {
    "id": "pi_pending", "object": "payment_intent", "status": "requires_payment_method",
    "last_payment_error": {
        "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
    },
}  # fmt: skip
NEEDS_AUTHENTICATION = {"id": "pi_pending", "object": "payment_intent", "status": "requires_action",
                        "last_payment_error": None}  # fmt: skip


@pytest.mark.parametrize(
    ("intent", "reason"),
    [
        (DECLINED, "Your card has insufficient funds."),
        (NEEDS_AUTHENTICATION, "Your card needs authentication (3D Secure) for this payment."),
    ],
    ids=["declined", "needs_authentication"],
)
async def test_a_failed_upgrade_payment_keeps_the_old_plan_and_answers_402_with_stripes_reason(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    engine: AsyncEngine,
    intent: dict[str, Any],
    reason: str,
) -> None:
    # Stripe's answer to a pending update whose invoice was declined: still on the old price.
    pending = wire_subscription("active", pending_update=_pending_update("price_wire_2"))
    pending["latest_invoice"] = {"id": "in_pending", "object": "invoice", "status": "open",
                                 "confirmation_secret": None}  # fmt: skip
    change_route = stripe_api.post("/v1/subscriptions/sub_wire").respond(200, json=pending)
    payments_route = stripe_api.get("/v1/invoice_payments").respond(
        200,
        json={"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": [
            {"id": "inpay_pending", "object": "invoice_payment", "invoice": "in_pending", "status": "open",
             "amount_paid": None, "amount_requested": 39000, "currency": "usd",
             "payment": {"type": "payment_intent", "payment_intent": intent}},
        ]},
    )  # fmt: skip
    headers, created, basic, pro = await _basic_subscriber(wire, stripe_api, auth)
    url = f"/api/v1/subscriptions/{created['id']}/upgrade"
    response = await wire.put(url, json={"new_pricing_plan_id": pro["id"]}, headers=headers)
    assert response.status_code == 402, response.text
    assert response.json()["code"] == "plan_change_payment_failed"
    assert response.json()["error"].startswith(reason)
    assert "stays on its current plan" in response.json()["error"]
    sent = form_of(change_route.calls.last.request)
    assert sent["payment_behavior"] == ["pending_if_incomplete"]
    assert payments_route.calls.last.request.url.params["invoice"] == "in_pending"
    fetched = (await wire.get(f"/api/v1/subscriptions/{created['id']}", headers=headers)).json()
    assert (fetched["pricing_plan_id"], fetched["pricing_plan"]["name"]) == (basic["id"], "Basic")
    assert await _plan_of(engine, created["id"]) == basic["id"]


async def test_an_upgrade_stripe_refuses_with_a_card_error_keeps_the_old_plan(
    wire: httpx.AsyncClient,
    stripe_api: respx.MockRouter,
    auth: Auth,
    engine: AsyncEngine,
) -> None:
    stripe_api.post("/v1/subscriptions/sub_wire").respond(
        402,
        json={"error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}},
    )
    headers, created, basic, pro = await _basic_subscriber(wire, stripe_api, auth)
    url = f"/api/v1/subscriptions/{created['id']}/upgrade"
    response = await wire.put(url, json={"new_pricing_plan_id": pro["id"]}, headers=headers)
    assert response.status_code == 402, response.text
    assert response.json()["error"] == "Your card was declined."
    assert await _plan_of(engine, created["id"]) == basic["id"]
