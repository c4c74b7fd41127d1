"""The dev emulator's test clocks keep time like Stripe: clock shapes, trials, prorations,
`invoice_now`, the dunning settings, disputes and the 24 h memory of meter event identifiers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import cli as cli_module
from app import clock
from app.config import Settings
from app.dev.processes import free_port
from app.dev.stack import dev_test_clock
from tests.support import emulator
from tests.support.emulator import DAY, HOUR


async def test_a_clock_moves_forward_only_holds_three_customers_and_takes_them_when_deleted(
    stripe_http: httpx.AsyncClient,
) -> None:
    frozen = int(time.time())
    clock = await emulator.clock(stripe_http, frozen)
    assert {k: clock[k] for k in ("object", "frozen_time", "status", "status_details", "livemode")} == {
        "object": "test_helpers.test_clock",
        "frozen_time": frozen,
        "status": "ready",
        "status_details": {},
        "livemode": False,
    }
    assert clock["deletes_after"] == clock["created"] + 30 * DAY
    customers = [await emulator.customer(stripe_http, clock["id"]) for _ in range(3)]
    fourth = await stripe_http.post("/v1/customers", data={"test_clock": clock["id"]})
    assert fourth.status_code == 400
    assert "maximum of 3 customers" in fourth.json()["error"]["message"]
    on_clock = await emulator.ok(await stripe_http.get(f"/v1/customers/{customers[0]}"))
    assert (on_clock["test_clock"], on_clock["created"]) == (clock["id"], frozen)

    await emulator.advance(stripe_http, clock["id"], frozen + DAY)
    backwards = await stripe_http.post(
        f"/v1/test_helpers/test_clocks/{clock['id']}/advance", data={"frozen_time": frozen}
    )
    assert backwards.status_code == 400
    assert (await stripe_http.get("/v1/test_helpers/test_clocks/clock_unknown")).status_code == 404

    deleted = await emulator.ok(await stripe_http.delete(f"/v1/test_helpers/test_clocks/{clock['id']}"))
    assert deleted == {"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True}
    assert (await stripe_http.get(f"/v1/customers/{customers[0]}")).status_code == 404
    assert (await stripe_http.get(f"/v1/test_helpers/test_clocks/{clock['id']}")).status_code == 404


async def test_a_trial_warns_three_days_before_its_end_then_bills_the_first_period(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock = await emulator.clock(stripe_http)
    customer = await emulator.customer(stripe_http, clock["id"])
    price = await emulator.price(stripe_http, 1500)
    subscription = await emulator.subscribe(stripe_http, customer, price, trial_period_days="14")
    start = clock["frozen_time"]
    assert (subscription["status"], subscription["trial_start"], subscription["trial_end"]) == (
        "trialing",
        start,
        start + 14 * DAY,
    )
    assert (subscription["current_period_start"], subscription["current_period_end"]) == (
        start,
        start + 14 * DAY,
    )

    await emulator.advance(stripe_http, clock["id"], start + 14 * DAY + 2 * HOUR)

    events = await emulator.events(stripe_http, subscription["id"])
    assert ("customer.subscription.trial_will_end", start + 11 * DAY) in events
    after = await emulator.ok(await stripe_http.get(f"/v1/subscriptions/{subscription['id']}"))
    assert after["status"] == "active"
    assert after["current_period_start"] == start + 14 * DAY
    (first,) = await emulator.invoices(stripe_http, customer)
    assert (first["billing_reason"], first["status"], first["amount_paid"]) == (
        "subscription_cycle",
        "paid",
        1500,
    )
    assert first["status_transitions"]["paid_at"] == start + 14 * DAY + HOUR


async def test_always_invoice_bills_credit_and_debit_at_once_and_a_downgrade_leaves_customer_credit(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock = await emulator.clock(stripe_http)
    customer = await emulator.customer(stripe_http, clock["id"])
    cheap, dear = await emulator.price(stripe_http, 3000), await emulator.price(stripe_http, 6000)
    subscription = await emulator.subscribe(stripe_http, customer, cheap)
    start, end = subscription["current_period_start"], subscription["current_period_end"]
    half = start + (end - start) // 2
    await emulator.advance(stripe_http, clock["id"], half)
    remaining = (end - half) / (end - start)
    item = subscription["items"]["data"][0]["id"]

    upgraded = await emulator.ok(
        await stripe_http.post(
            f"/v1/subscriptions/{subscription['id']}",
            data={"items[0][id]": item, "items[0][price]": dear, "proration_behavior": "always_invoice"},
        )
    )
    assert upgraded["items"]["data"][0]["id"] == item  # the same item, on the new price
    upgrade = await emulator.latest(stripe_http, subscription["id"])
    lines = sorted((line["amount"], line["proration"]) for line in upgrade["lines"]["data"])
    assert lines == [(-round(3000 * remaining), True), (round(6000 * remaining), True)]
    assert (upgrade["billing_reason"], upgrade["status"]) == ("subscription_update", "paid")
    assert upgrade["amount_paid"] == round(6000 * remaining) - round(3000 * remaining)

    await emulator.ok(
        await stripe_http.post(
            f"/v1/subscriptions/{subscription['id']}",
            data={"items[0][id]": item, "items[0][price]": cheap, "proration_behavior": "always_invoice"},
        )
    )
    downgrade = await emulator.latest(stripe_http, subscription["id"])
    credit = round(3000 * remaining) - round(6000 * remaining)
    assert (downgrade["total"], downgrade["amount_due"], downgrade["status"]) == (credit, 0, "paid")
    assert downgrade["ending_balance"] == credit
    assert (await emulator.ok(await stripe_http.get(f"/v1/customers/{customer}")))["balance"] == credit

    await emulator.advance(stripe_http, clock["id"], end + 2 * HOUR)
    renewal = await emulator.latest(stripe_http, subscription["id"])
    assert (renewal["total"], renewal["starting_balance"], renewal["amount_due"]) == (
        3000,
        credit,
        3000 + credit,
    )
    assert (await emulator.ok(await stripe_http.get(f"/v1/customers/{customer}")))["balance"] == 0


async def test_cancel_with_invoice_now_and_prorate_issues_the_final_invoice_with_usage_and_credit(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock = await emulator.clock(stripe_http)
    customer = await emulator.customer(stripe_http, clock["id"])
    price = await emulator.price(stripe_http, 2000)
    subscription = await emulator.subscribe(stripe_http, customer, price)
    start, end = subscription["current_period_start"], subscription["current_period_end"]
    quarter = start + (end - start) // 4
    await emulator.advance(stripe_http, clock["id"], quarter)

    cancelled = await emulator.ok(
        await stripe_http.delete(
            f"/v1/subscriptions/{subscription['id']}", params={"invoice_now": "true", "prorate": "true"}
        )
    )

    assert (cancelled["status"], cancelled["ended_at"], cancelled["canceled_at"]) == (
        "canceled",
        quarter,
        quarter,
    )
    final = await emulator.latest(stripe_http, subscription["id"])
    credit = -round(2000 * (end - quarter) / (end - start))
    assert [(line["amount"], line["proration"]) for line in final["lines"]["data"]] == [(credit, True)]
    assert (final["status"], final["amount_due"]) == ("paid", 0)
    assert (await emulator.ok(await stripe_http.get(f"/v1/customers/{customer}")))["balance"] == credit
    assert ("customer.subscription.deleted", quarter) in await emulator.events(
        stripe_http, subscription["id"]
    )


async def test_a_meter_event_identifier_is_forgotten_after_24_hours_of_clock_time(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock, customer, subscription = await emulator.metered_subscription(stripe_http)
    (first,) = await emulator.invoices(stripe_http, customer)
    assert (first["total"], first["status"]) == (0, "paid")  # usage is billed in arrears, none up front
    start = clock["frozen_time"]
    event = {
        "event_name": "api_calls",
        "identifier": f"usage-{customer}-day1",
        "timestamp": str(start + HOUR),
        "payload[stripe_customer_id]": customer,
        "payload[value]": "70",
    }
    await emulator.ok(await stripe_http.post("/v1/billing/meter_events", data=event))
    await emulator.advance(stripe_http, clock["id"], start + 23 * HOUR)
    assert (await stripe_http.post("/v1/billing/meter_events", data=event)).status_code == 400
    await emulator.advance(stripe_http, clock["id"], start + 25 * HOUR)
    await emulator.ok(await stripe_http.post("/v1/billing/meter_events", data=event))

    await emulator.advance(stripe_http, clock["id"], subscription["current_period_end"] + 2 * HOUR)
    renewal = await emulator.latest(stripe_http, subscription["id"])
    (usage,) = renewal["lines"]["data"]
    assert (usage["quantity"], usage["amount"], usage["period"]) == (
        140,
        280,
        {"start": start, "end": subscription["current_period_end"]},
    )


async def test_dunning_settings_can_end_retries_in_unpaid(stripe_http: httpx.AsyncClient) -> None:
    configured = await emulator.ok(
        await stripe_http.post(
            "/_config/test_clocks/dunning", data={"retry_days[]": ["1"], "after": "unpaid"}
        )
    )
    assert configured == {"retry_days": [1], "after": "unpaid"}
    try:
        clock = await emulator.clock(stripe_http)
        customer = await emulator.customer(stripe_http, clock["id"])
        subscription = await emulator.subscribe(stripe_http, customer, await emulator.price(stripe_http, 900))
        failing = await emulator.ok(
            await stripe_http.post(
                "/v1/payment_methods/pm_card_chargeCustomerFail/attach", data={"customer": customer}
            )
        )
        await emulator.ok(
            await stripe_http.post(
                f"/v1/customers/{customer}", data={"invoice_settings[default_payment_method]": failing["id"]}
            )
        )
        end = subscription["current_period_end"]
        await emulator.advance(stripe_http, clock["id"], end + 2 * HOUR)
        assert (await emulator.ok(await stripe_http.get(f"/v1/subscriptions/{subscription['id']}")))[
            "status"
        ] == "past_due"
        await emulator.advance(stripe_http, clock["id"], end + HOUR + DAY + 1)
        assert (await emulator.ok(await stripe_http.get(f"/v1/subscriptions/{subscription['id']}")))[
            "status"
        ] == "unpaid"
        renewal = await emulator.latest(stripe_http, subscription["id"])
        assert (renewal["status"], renewal["attempt_count"], renewal["next_payment_attempt"]) == (
            "open",
            2,
            None,
        )
        kinds = [kind for kind, _ in await emulator.events(stripe_http, renewal["id"])]
        assert kinds.count("invoice.payment_failed") == 2
    finally:
        await emulator.ok(
            await stripe_http.post(
                "/_config/test_clocks/dunning", data={"retry_days[]": ["3", "5", "7"], "after": "canceled"}
            )
        )


async def test_a_dispute_opened_on_a_charge_is_sent_and_closed_as_stripe_does(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock = await emulator.clock(stripe_http)
    customer = await emulator.customer(stripe_http, clock["id"])
    subscription = await emulator.subscribe(stripe_http, customer, await emulator.price(stripe_http, 4000))
    await emulator.advance(stripe_http, clock["id"], subscription["current_period_end"] + 2 * HOUR)
    renewal = await emulator.latest(stripe_http, subscription["id"])
    charge = (await emulator.ok(await stripe_http.get(f"/v1/payment_intents/{renewal['payment_intent']}")))[
        "latest_charge"
    ]
    charge_id = charge["id"] if isinstance(charge, dict) else charge

    opened = await emulator.ok(
        await stripe_http.post(f"/v1/test_helpers/charges/{charge_id}/dispute", data={"amount": "2500"})
    )
    assert {k: opened[k] for k in ("object", "amount", "charge", "status", "reason")} == {
        "object": "dispute",
        "amount": 2500,
        "charge": charge_id,
        "status": "needs_response",
        "reason": "fraudulent",
    }
    assert opened["payment_intent"] == renewal["payment_intent"]
    too_much = await stripe_http.post(
        f"/v1/test_helpers/charges/{charge_id}/dispute", data={"amount": "4001"}
    )
    assert too_much.status_code == 400
    closed = await emulator.ok(
        await stripe_http.post(f"/v1/test_helpers/disputes/{opened['id']}/close", data={"status": "lost"})
    )
    assert closed["status"] == "lost"
    assert (await emulator.ok(await stripe_http.get(f"/v1/disputes/{opened['id']}")))["status"] == "lost"
    assert [kind for kind, _ in await emulator.events(stripe_http, opened["id"])] == [
        "charge.dispute.created",
        "charge.dispute.closed",
    ]


async def test_cancel_at_period_end_ends_the_subscription_at_the_period_end(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock = await emulator.clock(stripe_http)
    customer = await emulator.customer(stripe_http, clock["id"])
    subscription = await emulator.subscribe(stripe_http, customer, await emulator.price(stripe_http, 1000))
    await emulator.ok(
        await stripe_http.post(
            f"/v1/subscriptions/{subscription['id']}", data={"cancel_at_period_end": "true"}
        )
    )
    end = subscription["current_period_end"]
    await emulator.advance(stripe_http, clock["id"], end + DAY)
    after = await emulator.ok(await stripe_http.get(f"/v1/subscriptions/{subscription['id']}"))
    assert (after["status"], after["ended_at"]) == ("canceled", end)
    assert len(await emulator.invoices(stripe_http, customer)) == 1  # no renewal


def _process_env(settings: Settings, billing_clock: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BILLING_CLOCK"}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        STRIPE_SECRET_KEY=settings.stripe_secret_key.get_secret_value(),
        STRIPE_API_BASE=str(settings.stripe_api_base),
        STRIPE_WEBHOOK_SECRET=settings.stripe_webhook_secret.get_secret_value(),
        JWT_SECRET=settings.jwt_secret.get_secret_value(),
        API_KEY_SERVICE_URL="http://127.0.0.1:9",
        METERING_SERVICE_URL="http://127.0.0.1:9",
        BILLING_CLOCK=billing_clock,
        PORT=str(free_port()),
    )
    return env


@pytest.mark.parametrize("command", ["api", "worker"])
def test_api_and_worker_refuse_to_start_on_a_test_clock_they_cannot_read(
    settings: Settings, command: str
) -> None:
    env = _process_env(settings, "stripe-test-clock:clock_nosuchclock")
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "app", command], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "billing: BILLING_CLOCK: cannot read Stripe test clock clock_nosuchclock: "
        "No such test_clock: 'clock_nosuchclock'"
    ]


async def test_a_process_started_with_billing_clock_runs_on_the_test_clocks_time(
    stripe_http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    future = int(time.time()) + 400 * DAY
    test_clock = await emulator.clock(stripe_http, future)
    on_clock = settings.model_copy(update={"billing_clock": f"stripe-test-clock:{test_clock['id']}"})
    monkeypatch.setattr(cli_module, "get_settings", lambda: on_clock)
    try:
        await asyncio.to_thread(cli_module.settings_or_exit)  # what `billing api` / `worker` run first
        assert clock.timestamp() == future
        assert clock.today() == datetime.fromtimestamp(future, UTC).date()
    finally:
        clock.install(clock.SystemClock())


async def test_the_dev_stack_keeps_its_test_clock_across_restarts(
    stripe_http: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    key = settings.stripe_secret_key.get_secret_value()
    saved = tmp_path / "test_clock.id"
    first = await asyncio.to_thread(dev_test_clock, str(settings.stripe_api_base), key, saved)
    again = await asyncio.to_thread(dev_test_clock, str(settings.stripe_api_base), key, saved)
    assert again == first == saved.read_text()
    assert (await emulator.ok(await stripe_http.get(f"/v1/test_helpers/test_clocks/{first}")))[
        "name"
    ] == "billing dev"
    await emulator.ok(await stripe_http.delete(f"/v1/test_helpers/test_clocks/{first}"))
    replaced = await asyncio.to_thread(dev_test_clock, str(settings.stripe_api_base), key, saved)
    assert replaced != first


async def test_events_page_back_with_starting_after_and_forward_with_ending_before(
    stripe_http: httpx.AsyncClient,
) -> None:
    await emulator.ok(await stripe_http.post("/v1/customers", data={"email": "mark@example.com"}))
    mark = (await emulator.ok(await stripe_http.get("/v1/events", params={"limit": 1})))["data"][0]["id"]
    made = [
        (await emulator.ok(await stripe_http.post("/v1/customers", data={"email": f"e{n}@example.com"})))[
            "id"
        ]
        for n in range(5)
    ]
    # Forward from the mark, two at a time: the oldest new ones first, each page newest first.
    forward: list[dict[str, Any]] = []
    cursor = mark
    for _ in range(10):
        page = await emulator.ok(
            await stripe_http.get("/v1/events", params={"limit": 2, "ending_before": cursor})
        )
        assert len(page["data"]) <= 2
        forward.extend(reversed(page["data"]))
        if not page["has_more"]:
            break
        cursor = forward[-1]["id"]
    assert [e["data"]["object"]["id"] for e in forward if e["type"] == "customer.created"] == made
    # Back from the newest, two at a time, the same events newest first.
    back: list[str] = []
    after: str | None = None
    while len(back) < len(forward):
        params: dict[str, Any] = {"limit": 2, **({"starting_after": after} if after else {})}
        page = await emulator.ok(await stripe_http.get("/v1/events", params=params))
        back.extend(e["id"] for e in page["data"])
        after = page["data"][-1]["id"]
    assert back[: len(forward)] == [e["id"] for e in reversed(forward)]
    unknown = await stripe_http.get("/v1/events", params={"ending_before": "evt_unknown"})
    assert unknown.status_code == 404
