"""The Stripe emulator driven directly over HTTP, as Stripe's API reference describes it: test
clocks, customers with a card, prices, subscriptions, and the events and invoices they leave.

Each helper takes a client authenticated with the emulator's secret key (the `stripe_http` fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

DAY = 86400
HOUR = 3600


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


async def clock(stripe: httpx.AsyncClient, frozen_time: int | None = None) -> dict[str, Any]:
    """A new test clock, frozen at `frozen_time` (default: now)."""
    body = {"frozen_time": frozen_time or int(time.time()), "name": "emulator"}
    return await ok(await stripe.post("/v1/test_helpers/test_clocks", data=body))


async def customer(stripe: httpx.AsyncClient, clock_id: str, card: str = "pm_card_visa") -> str:
    customer = await ok(
        await stripe.post("/v1/customers", data={"email": "c@example.com", "test_clock": clock_id})
    )
    method = await ok(
        await stripe.post(f"/v1/payment_methods/{card}/attach", data={"customer": customer["id"]})
    )
    await ok(
        await stripe.post(
            f"/v1/customers/{customer['id']}", data={"invoice_settings[default_payment_method]": method["id"]}
        )
    )
    return str(customer["id"])


async def price(stripe: httpx.AsyncClient, amount: int, **recurring: str) -> str:
    product = await ok(await stripe.post("/v1/products", data={"name": "API"}))
    body: dict[str, Any] = {"product": product["id"], "currency": "usd", "recurring[interval]": "month"}
    if recurring.get("usage_type") == "metered":
        body["unit_amount_decimal"] = str(amount)
    else:
        body["unit_amount"] = amount
    body.update({f"recurring[{k}]": v for k, v in recurring.items()})
    return str((await ok(await stripe.post("/v1/prices", data=body)))["id"])


async def subscribe(stripe: httpx.AsyncClient, customer: str, price: str, **extra: Any) -> dict[str, Any]:
    return await ok(
        await stripe.post("/v1/subscriptions", data={"customer": customer, "items[0][price]": price, **extra})
    )


async def advance(stripe: httpx.AsyncClient, clock_id: str, moment: int) -> None:
    advancing = await ok(
        await stripe.post(f"/v1/test_helpers/test_clocks/{clock_id}/advance", data={"frozen_time": moment})
    )
    assert advancing["status"] == "advancing"
    assert advancing["status_details"] == {"advancing": {"target_frozen_time": moment}}
    for _ in range(300):
        found = await ok(await stripe.get(f"/v1/test_helpers/test_clocks/{clock_id}"))
        if found["status"] == "ready":
            assert found["frozen_time"] == moment
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the clock never became ready")


async def events(stripe: httpx.AsyncClient, object_id: str) -> list[tuple[str, int]]:
    """(type, created) of the events about `object_id`, in the order they were sent."""
    found: list[tuple[str, int]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"starting_after": after} if after else {})}
        page = (await stripe.get("/v1/events", params=params)).json()
        found.extend(
            (e["type"], e["created"]) for e in page["data"] if e["data"]["object"].get("id") == object_id
        )
        if not page["has_more"]:
            return found[::-1]  # Stripe lists newest first
        after = page["data"][-1]["id"]


async def invoices(stripe: httpx.AsyncClient, customer: str) -> list[dict[str, Any]]:
    listed = (await stripe.get("/v1/invoices", params={"customer": customer, "limit": 100})).json()["data"]
    return sorted(listed, key=lambda i: (i["created"], i["id"]))


async def latest(stripe: httpx.AsyncClient, subscription_id: str) -> dict[str, Any]:
    """The subscription's latest invoice (several can share a second of clock time)."""
    subscription = await ok(await stripe.get(f"/v1/subscriptions/{subscription_id}"))
    return await ok(await stripe.get(f"/v1/invoices/{subscription['latest_invoice']}"))


async def metered_subscription(
    stripe: httpx.AsyncClient, unit_amount: int = 2
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A customer on a new test clock subscribed to a price of `unit_amount` per `api_calls` meter
    event: (clock, customer id, subscription)."""
    on_clock = await clock(stripe)
    customer_id = await customer(stripe, on_clock["id"])
    meter = await ok(
        await stripe.post("/v1/billing/meters", data={"event_name": "api_calls", "display_name": "Calls"})
    )
    metered = await price(stripe, unit_amount, usage_type="metered", meter=meter["id"])
    return on_clock, customer_id, await subscribe(stripe, customer_id, metered)
