"""The emulator's test clocks bill a meter event once, however often its request is replayed."""

from __future__ import annotations

import httpx

from tests.dev.test_emulator_test_clocks import (
    HOUR,
    _advance,
    _clock,
    _customer,
    _latest,
    _ok,
    _price,
    _subscribe,
    stripe,
)

__all__ = ["stripe"]  # the fixture, shared with the test clock tests


async def test_a_meter_event_replayed_under_its_idempotency_key_is_billed_once(
    stripe: httpx.AsyncClient,
) -> None:
    clock = await _clock(stripe)
    customer = await _customer(stripe, clock["id"])
    meter = await _ok(
        await stripe.post("/v1/billing/meters", data={"event_name": "api_calls", "display_name": "Calls"})
    )
    subscription = await _subscribe(
        stripe, customer, await _price(stripe, 2, usage_type="metered", meter=meter["id"])
    )
    event = {
        "event_name": "api_calls",
        "identifier": f"usage-{customer}-day1",
        "timestamp": str(clock["frozen_time"] + HOUR),
        "payload[stripe_customer_id]": customer,
        "payload[value]": "70",
    }
    key = {"Idempotency-Key": f"meter-{customer}-day1"}
    first = await _ok(await stripe.post("/v1/billing/meter_events", data=event, headers=key))
    replayed = await stripe.post("/v1/billing/meter_events", data=event, headers=key)

    await _advance(stripe, clock["id"], subscription["current_period_end"] + 2 * HOUR)
    (usage,) = (await _latest(stripe, subscription["id"]))["lines"]["data"]

    assert replayed.json() == first
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert (usage["quantity"], usage["amount"]) == (70, 140)


async def test_a_scheduled_cancellations_final_invoice_waits_an_hour_for_the_last_days_usage(
    stripe: httpx.AsyncClient,
) -> None:
    clock = await _clock(stripe)
    customer = await _customer(stripe, clock["id"])
    meter = await _ok(
        await stripe.post("/v1/billing/meters", data={"event_name": "api_calls", "display_name": "Calls"})
    )
    subscription = await _subscribe(
        stripe, customer, await _price(stripe, 2, usage_type="metered", meter=meter["id"])
    )
    await _ok(
        await stripe.post(f"/v1/subscriptions/{subscription['id']}", data={"cancel_at_period_end": "true"})
    )
    end = subscription["current_period_end"]
    await _advance(stripe, clock["id"], end + 60)
    draft = await _latest(stripe, subscription["id"])
    # The last day's calls, reported once the day has ended, before the draft is finalized.
    await _ok(
        await stripe.post(
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
    await _advance(stripe, clock["id"], end + 2 * HOUR)
    final = await _ok(await stripe.get(f"/v1/invoices/{draft['id']}"))
    ended = await _ok(await stripe.get(f"/v1/subscriptions/{subscription['id']}"))

    assert (draft["status"], draft["created"]) == ("draft", end)
    assert (final["status"], final["amount_paid"]) == ("paid", 60)
    assert (ended["status"], ended["ended_at"]) == ("canceled", end)
