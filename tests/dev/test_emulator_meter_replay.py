"""The emulator's test clocks bill a meter event once, however often its request is replayed."""

from __future__ import annotations

import httpx

from tests.support import emulator
from tests.support.emulator import HOUR


async def test_a_meter_event_replayed_under_its_idempotency_key_is_billed_once(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock, customer, subscription = await emulator.metered_subscription(stripe_http)
    event = {
        "event_name": "api_calls",
        "identifier": f"usage-{customer}-day1",
        "timestamp": str(clock["frozen_time"] + HOUR),
        "payload[stripe_customer_id]": customer,
        "payload[value]": "70",
    }
    key = {"Idempotency-Key": f"meter-{customer}-day1"}
    first = await emulator.ok(await stripe_http.post("/v1/billing/meter_events", data=event, headers=key))
    replayed = await stripe_http.post("/v1/billing/meter_events", data=event, headers=key)

    await emulator.advance(stripe_http, clock["id"], subscription["current_period_end"] + 2 * HOUR)
    (usage,) = (await emulator.latest(stripe_http, subscription["id"]))["lines"]["data"]

    assert replayed.json() == first
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert (usage["quantity"], usage["amount"]) == (70, 140)


async def test_a_scheduled_cancellations_final_invoice_waits_an_hour_for_the_last_days_usage(
    stripe_http: httpx.AsyncClient,
) -> None:
    clock, customer, subscription = await emulator.metered_subscription(stripe_http)
    await emulator.ok(
        await stripe_http.post(
            f"/v1/subscriptions/{subscription['id']}", data={"cancel_at_period_end": "true"}
        )
    )
    end = subscription["current_period_end"]
    await emulator.advance(stripe_http, clock["id"], end + 60)
    draft = await emulator.latest(stripe_http, subscription["id"])
    # The last day's calls, reported once the day has ended, before the draft is finalized.
    await emulator.ok(
        await stripe_http.post(
            "/v1/billing/meter_events",
            data={
                "event_name": "api_calls",
                "identifier": f"usage-{customer}-last-day",
                "timestamp": str(end - 1),
                "payload[stripe_customer_id]": customer,
                "payload[value]": "30",
            },
        )
    )
    await emulator.advance(stripe_http, clock["id"], end + 2 * HOUR)
    final = await emulator.ok(await stripe_http.get(f"/v1/invoices/{draft['id']}"))
    ended = await emulator.ok(await stripe_http.get(f"/v1/subscriptions/{subscription['id']}"))

    assert (draft["status"], draft["created"]) == ("draft", end)
    assert (final["status"], final["amount_paid"]) == ("paid", 60)
    assert (ended["status"], ended["ended_at"]) == ("canceled", end)
