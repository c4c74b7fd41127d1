"""Billing over time: the emulator's test clocks renew, invoice usage, retry and end subscriptions,
and what they send through our webhook endpoint and worker leaves the right rows.

Each story runs our business clock on the emulator's test clock (what BILLING_CLOCK does in a
process), relays every event the emulator records to `POST /webhooks/stripe`, signed, and runs the
worker's job for it, in the order Stripe sent them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.dev.siblings import build_app
from app.models import Earning, Invoice, Subscription, UsageRecord
from app.stripe.test_clocks import TestClockTime
from app.usage.jobs import aggregate_usage
from app.webhooks.jobs import process_stripe_event
from tests.support import emulator, rows
from tests.support.auth import Auth
from tests.support.emulator import DAY, HOUR
from tests.support.journeys import add_card, create_plan, new_api_id, register, subscribe
from tests.support.worker import Ctx, send


@pytest.fixture
def metering() -> Iterator[respx.MockRouter]:
    """The dev metering stand-in answers for METERING_SERVICE_URL; Stripe (the emulator) is real."""
    stand_in = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app()), base_url="http://metering.test"
    )

    async def forward(request: httpx.Request) -> httpx.Response:
        answer = await stand_in.request(
            request.method, str(request.url), content=request.content, headers=request.headers
        )
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="metering.test").mock(side_effect=forward)
        mock.route(host="127.0.0.1").pass_through()
        yield mock


@dataclass
class Timeline:
    """One emulator test clock, our business time on it, and its events relayed to our webhook."""

    client: httpx.AsyncClient
    stripe_http: httpx.AsyncClient
    ctx: Ctx
    clock_id: str
    last_event: str | None
    outcomes: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    async def start(
        cls, client: httpx.AsyncClient, stripe_http: httpx.AsyncClient, ctx: Ctx, customer: str
    ) -> Timeline:
        """A clock at the present second with `customer` on it; earlier events are not relayed."""
        newest = (await stripe_http.get("/v1/events", params={"limit": 1})).json()["data"]
        created = await stripe_http.post(
            "/v1/test_helpers/test_clocks",
            data={"frozen_time": int(time.time()), "customer": customer, "name": "billing over time"},
        )
        assert created.status_code == 200, created.text
        return cls(client, stripe_http, ctx, created.json()["id"], newest[0]["id"] if newest else None)

    async def now(self) -> int:
        return int(
            (await self.stripe_http.get(f"/v1/test_helpers/test_clocks/{self.clock_id}")).json()[
                "frozen_time"
            ]
        )

    async def advance_to(self, moment: int) -> None:
        await emulator.advance(self.stripe_http, self.clock_id, moment)
        await self.relay()

    async def relay(self) -> list[dict[str, Any]]:
        """Post every new event to our endpoint, signed, and run the worker's job for it."""
        events = await _all_events(self.stripe_http, self.last_event)
        for event in events:
            response = await send(self.client, event)
            assert response.status_code == 200, response.text
            self.outcomes[event["id"]] = await process_stripe_event(self.ctx, event["id"])
            self.last_event = event["id"]
        return events

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        return dict((await self.stripe_http.get(f"/v1/subscriptions/{subscription_id}")).json())


async def _all_events(stripe_http: httpx.AsyncClient, after: str | None) -> list[dict[str, Any]]:
    """The emulator's events sent after event `after` (all, if None), oldest first.

    Stripe lists events newest first: page back until `after`."""
    found: list[dict[str, Any]] = []
    older_than: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"starting_after": older_than} if older_than else {})}
        page = (await stripe_http.get("/v1/events", params=params)).json()
        for event in page["data"]:
            if event["id"] == after:
                return found[::-1]
            found.append(event)
        if not page["has_more"] or not page["data"]:
            return found[::-1]
        older_than = page["data"][-1]["id"]


async def _invoices(engine: AsyncEngine, subscription_id: str) -> list[Any]:
    async with engine.connect() as connection:
        statement = select(Invoice).filter_by(subscription_id=subscription_id).order_by(Invoice.period_end)
        return list((await connection.execute(statement)).all())


async def _renewals(engine: AsyncEngine, subscription_id: str, first_invoice: str) -> list[Any]:
    """Our invoices of the subscription after its first one, by period."""
    return [i for i in await _invoices(engine, subscription_id) if i.stripe_invoice_id != first_invoice]


async def _subscription(engine: AsyncEngine, subscription_id: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(Subscription).filter_by(id=subscription_id))).one()


@dataclass
class Story:
    """A paying subscriber on its own test clock: our subscription, its Stripe ids, the headers."""

    timeline: Timeline
    engine: AsyncEngine
    subscribed: dict[str, Any]
    headers: dict[str, str]
    stripe_id: str
    first_invoice: str

    async def renewals(self) -> list[Any]:
        return await _renewals(self.engine, self.subscribed["id"], self.first_invoice)

    async def ours(self) -> Any:
        return await _subscription(self.engine, self.subscribed["id"])


@dataclass
class Stack:
    """The fixtures every story uses: our API, the emulator, the worker and the database."""

    client: httpx.AsyncClient
    stripe_http: httpx.AsyncClient
    ctx: Ctx
    auth: Auth
    engine: AsyncEngine
    settings: Settings

    @asynccontextmanager
    async def paying_subscriber(self, plan: dict[str, Any]) -> AsyncIterator[Story]:
        """A new consumer on a new test clock, subscribed to `plan` with a card, and our business
        time on that clock while the story runs."""
        headers = self.auth("consumer")
        registered = await register(self.client, headers)
        timeline = await Timeline.start(
            self.client, self.stripe_http, self.ctx, registered["stripe_customer_id"]
        )
        with clock.use(TestClockTime(self.settings, timeline.clock_id, refresh_seconds=0)):
            await add_card(self.client, headers)
            subscribed = await subscribe(self.client, headers, plan)
            assert subscribed.status_code == 201, subscribed.text
            await timeline.relay()
            stripe_id = subscribed.json()["stripe_subscription_id"]
            first_invoice = (await timeline.subscription(stripe_id))["latest_invoice"]
            yield Story(timeline, self.engine, subscribed.json(), headers, stripe_id, first_invoice)


@pytest.fixture
def stack(
    client: httpx.AsyncClient,
    stripe_http: httpx.AsyncClient,
    worker_ctx: Ctx,
    auth: Auth,
    engine: AsyncEngine,
    settings: Settings,
) -> Stack:
    return Stack(client, stripe_http, worker_ctx, auth, engine, settings)


async def test_monthly_renewals_are_invoiced_mirrored_and_paid_once_per_period(stack: Stack) -> None:
    plan = await create_plan(stack.client, stack.auth("creator"), new_api_id(), monthly_price="29")
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        ends = []
        for _ in range(3):
            period_end = int((await timeline.subscription(story.stripe_id))["current_period_end"])
            ends.append(period_end)
            await timeline.advance_to(period_end + 2 * HOUR)

        invoices = await _invoices(stack.engine, story.subscribed["id"])
        renewals = await story.renewals()
        ours = await story.ours()
        stripe_subscription = await timeline.subscription(story.stripe_id)

    assert [(i.status, i.amount_due, i.amount_paid, i.currency) for i in invoices] == [
        ("paid", 2900, 2900, "usd")
    ] * 4
    assert len({i.stripe_invoice_id for i in invoices}) == 4
    assert [int(i.period_end.timestamp()) for i in renewals] == ends
    assert all(
        i.paid_at is not None and int(i.paid_at.timestamp()) >= end
        for i, end in zip(renewals, ends, strict=True)
    )
    assert ours.status == "active"
    assert int(ours.current_period_end.timestamp()) == stripe_subscription["current_period_end"]
    assert int(ours.current_period_start.timestamp()) == ends[-1]
    assert set(timeline.outcomes.values()) <= {"processed", "ignored", "duplicate"}


async def test_usage_metered_in_a_period_is_billed_once_on_that_periods_renewal(
    stack: Stack, metering: respx.MockRouter
) -> None:
    plan = await create_plan(
        stack.client, stack.auth("creator"), new_api_id(), type="pay_per_use", price_per_call="0.25"
    )
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        calls_url = f"http://metering.test/api/v1/usage/subscription/{story.subscribed['id']}/calls"
        metered = []
        async with httpx.AsyncClient() as http:
            for calls in (1234, 401):
                start = await timeline.now()
                period_end = int((await timeline.subscription(story.stripe_id))["current_period_end"])
                # Traffic on two simulated days of the period, counted on the clock's day.
                await timeline.advance_to(start + 2 * DAY)
                assert (
                    await http.post(calls_url, json={"successful": calls - 1, "failed": 1})
                ).status_code == 204
                await timeline.advance_to(start + 9 * DAY)
                assert (await http.post(calls_url, json={"successful": 1})).status_code == 204
                metered.append(calls)  # successful calls are billed
                # The renewal's draft: our worker reports the period's usage before Stripe finalizes it.
                await timeline.advance_to(period_end)
                await timeline.advance_to(period_end + 2 * HOUR)
        renewals = await story.renewals()
        async with stack.engine.connect() as connection:
            records = (
                await connection.execute(
                    select(UsageRecord).filter_by(subscription_id=story.subscribed["id"])
                )
            ).all()

    assert [i.status for i in renewals] == ["paid", "paid"]
    billed = [sum(int(line["quantity"]) for line in i.lines) for i in renewals]
    assert billed == metered
    expected = [
        int((Decimal("25") * n).to_integral_value(ROUND_HALF_UP)) for n in metered
    ]  # 0.25 USD = 25 cents
    assert [i.amount_paid for i in renewals] == expected
    assert sum(r.quantity for r in records) == sum(metered)  # each day recorded once


async def test_a_failing_card_goes_past_due_is_retried_on_schedule_then_cancelled(stack: Stack) -> None:
    client, stripe_http = stack.client, stack.stripe_http
    plan = await create_plan(client, stack.auth("creator"), new_api_id(), monthly_price="19")
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        failing = await add_card(client, story.headers, "pm_card_chargeCustomerFail")
        made_default = await client.put(
            f"/api/v1/payment-methods/{failing['id']}/default", headers=story.headers
        )
        assert made_default.status_code == 200, made_default.text
        await timeline.relay()
        period_end = int((await timeline.subscription(story.stripe_id))["current_period_end"])

        await timeline.advance_to(period_end + 2 * HOUR)
        after_first = await story.ours()
        (renewal,) = await story.renewals()
        stripe_invoice = (await stripe_http.get(f"/v1/invoices/{renewal.stripe_invoice_id}")).json()

        statuses = []
        for days in (3, 3 + 5, 3 + 5 + 7):
            await timeline.advance_to(period_end + HOUR + days * DAY + 60)
            statuses.append((await story.ours()).status)
        final_invoice = (await stripe_http.get(f"/v1/invoices/{renewal.stripe_invoice_id}")).json()

    assert (after_first.status, renewal.status) == ("past_due", "open")
    assert stripe_invoice["attempt_count"] == 1
    assert stripe_invoice["next_payment_attempt"] == period_end + HOUR + 3 * DAY
    assert statuses == ["past_due", "past_due", "cancelled"]
    assert (final_invoice["attempt_count"], final_invoice["next_payment_attempt"]) == (4, None)
    stripe_subscription = await timeline.subscription(story.stripe_id)
    assert stripe_subscription["status"] == "canceled"


async def _earnings(engine: AsyncEngine, subscription_id: str) -> dict[str, int]:
    """Net earnings per kind of ledger line for the subscription."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(Earning.kind, Earning.net_amount).filter_by(subscription_id=subscription_id)
        )
        sums: dict[str, int] = {}
        for kind, net in result:
            sums[kind] = sums.get(kind, 0) + net
        return sums


async def test_an_upgrade_mid_period_is_invoiced_prorated_at_once_and_the_next_renewal_at_the_new_price(
    stack: Stack,
) -> None:
    client = stack.client
    creator, api_id = stack.auth("creator"), new_api_id()
    basic = await create_plan(client, creator, api_id, name="Basic", monthly_price="30")
    pro = await create_plan(client, creator, api_id, name="Pro", monthly_price="60")
    async with stack.paying_subscriber(basic) as story:
        timeline = story.timeline
        period = await timeline.subscription(story.stripe_id)
        start, end = int(period["current_period_start"]), int(period["current_period_end"])
        half = start + (end - start) // 2
        await timeline.advance_to(half)

        await _change_plan(stack, story, pro)
        (proration,) = await story.renewals()
        await timeline.advance_to(end + 2 * HOUR)
        invoices = await story.renewals()
        ours = await story.ours()

    remaining = Decimal(end - half) / Decimal(end - start)
    credit = int((3000 * remaining).to_integral_value(ROUND_HALF_UP))
    debit = int((6000 * remaining).to_integral_value(ROUND_HALF_UP))
    assert (proration.status, proration.amount_paid) == ("paid", debit - credit)
    assert sorted(line["amount"] for line in proration.lines) == [-credit, debit]
    (renewal,) = [i for i in invoices if i.id != proration.id]
    assert (renewal.status, renewal.amount_paid) == ("paid", 6000)
    assert ours.pricing_plan_id == uuid.UUID(pro["id"])
    assert int(ours.current_period_start.timestamp()) == end


async def test_a_trial_ends_three_days_after_its_warning_with_the_first_invoice_paid(stack: Stack) -> None:
    plan = await create_plan(
        stack.client, stack.auth("creator"), new_api_id(), monthly_price="15", trial_period_days=10
    )
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        assert (await story.ours()).status == "trial"
        trial_end = int((await timeline.subscription(story.stripe_id))["trial_end"])
        await timeline.advance_to(trial_end - 3 * DAY)
        warned = [
            e for e in await _all_events(stack.stripe_http, None) if e["type"].endswith("trial_will_end")
        ]
        assert warned[-1]["data"]["object"]["id"] == story.stripe_id
        assert timeline.outcomes[warned[-1]["id"]] == "processed"
        await timeline.advance_to(trial_end + 2 * HOUR)
        invoices = await _invoices(stack.engine, story.subscribed["id"])
        ours = await story.ours()

    assert ours.status == "active"
    assert [(i.status, i.amount_paid) for i in invoices if i.amount_paid] == [("paid", 1500)]
    assert int(ours.current_period_start.timestamp()) == trial_end


async def test_a_lost_dispute_on_a_renewal_takes_back_the_creators_share_of_it(stack: Stack) -> None:
    stripe_http, engine = stack.stripe_http, stack.engine
    plan = await create_plan(stack.client, stack.auth("creator"), new_api_id(), monthly_price="50")
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        await timeline.advance_to(
            int((await timeline.subscription(story.stripe_id))["current_period_end"]) + 2 * HOUR
        )
        (renewal,) = await story.renewals()
        earned = await _earnings(engine, story.subscribed["id"])
        intent = (await stripe_http.get(f"/v1/invoices/{renewal.stripe_invoice_id}")).json()["payment_intent"]
        charge = (await stripe_http.get(f"/v1/payment_intents/{intent}")).json()["latest_charge"]
        charge_id = charge["id"] if isinstance(charge, dict) else charge
        opened = (await stripe_http.post(f"/v1/test_helpers/charges/{charge_id}/dispute")).json()
        await stripe_http.post(f"/v1/test_helpers/disputes/{opened['id']}/close", data={"status": "lost"})
        await timeline.relay()
        after = await _earnings(engine, story.subscribed["id"])

    assert earned["charge"] == 2 * 4000  # the first invoice and the renewal, 20% commission off
    assert after["charge"] == earned["charge"]
    assert after["reversal"] == 4000  # the renewal's share, taken back once


async def _change_plan(stack: Stack, story: Story, plan: dict[str, Any]) -> None:
    """The subscriber moves to `plan` (200), and the events of the change are relayed."""
    changed = await stack.client.put(
        f"/api/v1/subscriptions/{story.subscribed['id']}/upgrade",
        json={"new_pricing_plan_id": plan["id"]},
        headers=story.headers,
    )
    assert changed.status_code == 200, changed.text
    await story.timeline.relay()


async def _redeliver_every_event_of(stack: Stack, customer: str) -> None:
    """Stripe sends every event about the customer again, and the worker runs each again."""
    for event in await _all_events(stack.stripe_http, None):
        if event["data"]["object"].get("customer") == customer:
            await send(stack.client, event)
            await process_stripe_event(stack.ctx, event["id"])


async def _traffic(story: Story, successful: int) -> None:
    """`successful` calls today on the story's clock, as the metering service counts them."""
    url = f"http://metering.test/api/v1/usage/subscription/{story.subscribed['id']}/calls"
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, json={"successful": successful, "failed": 2})).status_code == 204


async def test_overage_past_the_included_calls_is_billed_through_the_meter_once_on_the_renewal(
    stack: Stack, metering: respx.MockRouter
) -> None:
    plan = await create_plan(
        stack.client,
        stack.auth("creator"),
        new_api_id(),
        monthly_price="29",
        call_limit=1000,
        overage_price_per_call="0.015",
    )
    async with stack.paying_subscriber(plan) as story:
        timeline = story.timeline
        stripe_subscription = await timeline.subscription(story.stripe_id)
        ours = await story.ours()
        start, end = (int(stripe_subscription[k]) for k in ("current_period_start", "current_period_end"))
        await timeline.advance_to(start + 2 * DAY)
        await _traffic(story, 800)
        await timeline.advance_to(start + 9 * DAY)
        await _traffic(story, 435)  # 1,235 calls: 235 past the 1,000 included
        await aggregate_usage(stack.ctx)
        await timeline.advance_to(end)
        await timeline.advance_to(end + 2 * HOUR)
        # The usage job and every webhook again: nothing more is billed.
        await aggregate_usage(stack.ctx)
        await _redeliver_every_event_of(stack, stripe_subscription["customer"])
        (renewal,) = await story.renewals()
        stripe_renewal = (await stack.stripe_http.get(f"/v1/invoices/{renewal.stripe_invoice_id}")).json()

    metered = [i for i in stripe_subscription["items"]["data"] if i["plan"]["usage_type"] == "metered"]
    assert [i["id"] for i in metered] == [ours.stripe_overage_item_id]
    assert len(stripe_subscription["items"]["data"]) == 2
    # 235 calls past the included ones at 1.5 cents: 352.5, rounded half up as Stripe rounds.
    lines = sorted((line["quantity"], line["amount"]) for line in renewal.lines)
    assert lines == [(1, 2900), (1235, 353)]
    assert (renewal.status, renewal.amount_paid) == ("paid", 2900 + 353)
    assert stripe_renewal["total"] == 2900 + 353
    assert not [line for line in renewal.lines if (line.get("description") or "").startswith("Overage")]


async def test_a_change_from_an_overage_plan_to_a_hard_limit_plan_removes_the_meter_item_billing_calls_so_far(
    stack: Stack, metering: respx.MockRouter
) -> None:
    creator, api_id = stack.auth("creator"), new_api_id()
    overage = await create_plan(
        stack.client, creator, api_id, monthly_price="29", call_limit=1000, overage_price_per_call="0.015"
    )
    hard = await create_plan(stack.client, creator, api_id, monthly_price="29", call_limit=5000)
    async with stack.paying_subscriber(overage) as story:
        timeline = story.timeline
        period = await timeline.subscription(story.stripe_id)
        start, end = int(period["current_period_start"]), int(period["current_period_end"])
        await timeline.advance_to(start + 2 * DAY)
        await _traffic(story, 1300)
        await timeline.advance_to(start + 10 * DAY)
        await _change_plan(stack, story, hard)
        (at_once,) = await story.renewals()
        ours = await story.ours()
        items = (await timeline.subscription(story.stripe_id))["items"]["data"]
        await _traffic(story, 700)  # on the hard-limit plan: no overage, nothing per call
        await timeline.advance_to(end + 2 * HOUR)
        renewal = next(i for i in await story.renewals() if i.id != at_once.id)

    assert ours.stripe_overage_item_id is None
    assert ours.pricing_plan_id == uuid.UUID(hard["id"])
    assert [i["id"] for i in items] == [ours.stripe_subscription_item_id]
    # The calls until the change, through the tiers: 300 past the 1,000 included at 1.5 cents.
    lines = sorted((line["quantity"], line["amount"]) for line in at_once.lines)
    assert [line for line in lines if line[0] > 1] == [(1300, 450)]
    assert sum(amount for _quantity, amount in lines) == 450
    assert (at_once.status, at_once.amount_paid) == ("paid", 450)  # same monthly price: prorations net 0
    assert [(line["quantity"], line["amount"]) for line in renewal.lines] == [(1, 2900)]
    assert (renewal.status, renewal.amount_paid) == ("paid", 2900)


def _overage_lines(invoices: list[Any]) -> list[tuple[int, int]]:
    """(quantity, amount) of the overage invoice lines on `invoices` (the meter's usage aside)."""
    return [
        (line["quantity"], line["amount"])
        for invoice in invoices
        for line in invoice.lines
        if (line.get("description") or "").startswith("Overage")
    ]


async def _legacy_overage_change(
    stack: Stack, target: dict[str, Any], *, before: int, after: int, older_target: bool = False
) -> tuple[Story, list[Any], list[Any]]:
    """A subscription made before the overage meter item (1,000 calls included, 1.5 cents past
    them) with `before` calls, then a change to `target` (`older_target`: a plan made before the
    item too) on day 10, retried, then `after` calls
    and the renewal, with every webhook redelivered: the story, the invoices made at the change
    and all the invoices after the first."""
    creator, api_id = stack.auth("creator"), new_api_id()
    legacy = await create_plan(
        stack.client, creator, api_id, monthly_price="29", call_limit=1000, overage_price_per_call="0.015"
    )
    await rows.made_before_the_overage_meter_item(stack.engine, legacy["id"])
    target = await create_plan(stack.client, creator, api_id, **target)
    if older_target:
        await rows.made_before_the_overage_meter_item(stack.engine, target["id"])
    async with stack.paying_subscriber(legacy) as story:
        timeline = story.timeline
        period = await timeline.subscription(story.stripe_id)
        assert len(period["items"]["data"]) == 1  # no overage meter item
        start, end = int(period["current_period_start"]), int(period["current_period_end"])
        await timeline.advance_to(start + 2 * DAY)
        await _traffic(story, before)
        await timeline.advance_to(start + 10 * DAY)
        for _ in range(2):  # the change, and the change again (its answer was lost)
            await _change_plan(stack, story, target)
        at_change = await story.renewals()
        await timeline.advance_to(start + 12 * DAY)
        await _traffic(story, after)
        await aggregate_usage(stack.ctx)
        await timeline.advance_to(end)
        await timeline.advance_to(end + 2 * HOUR)
        await _redeliver_every_event_of(stack, period["customer"])
        await aggregate_usage(stack.ctx)
        return story, at_change, await story.renewals()


async def test_an_older_subscription_moved_to_a_meter_item_plan_is_billed_its_overage_until_then_once(
    stack: Stack, metering: respx.MockRouter
) -> None:
    metered = {"monthly_price": "29", "call_limit": 1000, "overage_price_per_call": "0.015"}
    story, at_change, invoices = await _legacy_overage_change(stack, metered, before=1200, after=300)

    ours = await story.ours()
    assert ours.stripe_overage_item_id is not None
    # 200 calls past the 1,000 included, at 1.5 cents, on the invoice the change made.
    assert _overage_lines(at_change) == [(200, 300)]
    assert [i.status for i in at_change] == ["paid"]
    # Nothing more at the renewal: the 300 calls after the change are within the meter's 1,000.
    assert _overage_lines(invoices) == [(200, 300)]
    assert all(i.status == "paid" for i in invoices)


async def test_an_older_subscription_changing_plan_mid_period_bills_each_call_past_the_included_once(
    stack: Stack, metering: respx.MockRouter
) -> None:
    # Another plan of the same kind (no meter item), at 2 cents past the same 1,000 calls.
    older = {"monthly_price": "29", "call_limit": 1000, "overage_price_per_call": "0.02"}
    story, at_change, invoices = await _legacy_overage_change(
        stack, older, before=1200, after=300, older_target=True
    )

    ours = await story.ours()
    assert ours.stripe_overage_item_id is None
    # Until the change, on the plan then: 200 at 1.5 cents; at the close, the 300 more at 2 cents.
    assert _overage_lines(at_change) == [(200, 300)]
    assert sorted(_overage_lines(invoices)) == [(200, 300), (300, 600)]
    assert all(i.status == "paid" for i in invoices)


async def test_an_older_subscription_downgraded_to_the_free_plan_is_billed_its_overage_until_then_once(
    stack: Stack, metering: respx.MockRouter
) -> None:
    free = {"type": "free", "call_limit": 5000}
    story, _at_change, _invoices = await _legacy_overage_change(stack, free, before=1200, after=300)

    ours = await story.ours()
    assert ours.stripe_subscription_id is None
    # The Stripe subscription's invoices (its final one, made at the cancel, is no longer ours).
    listed = await stack.stripe_http.get(
        "/v1/invoices", params={"subscription": story.stripe_id, "limit": 100}
    )
    overage = [
        (line["quantity"], line["amount"])
        for invoice in listed.json()["data"]
        for line in invoice["lines"]["data"]
        if (line.get("description") or "").startswith("Overage")
    ]
    # 200 calls past the 1,000 included, at 1.5 cents, on the final invoice the cancel made.
    assert overage == [(200, 300)]
