"""`billing simulate`: a seedable marketplace scenario run over Stripe test-clock time (dev only).

Creators publish subscription and pay-per-use plans in USD, EUR and JPY; consumers register, add
a card (a few of them cards that start failing after the first month), subscribe, and call the API
every simulated day (traffic counted by the metering stand-in). Time moves by advancing the
emulator's test clocks, one per consumer, to each period end and an hour and more past it, as
Stripe renews, invoices usage and charges; business time follows the simulation's own clock
(BILLING_CLOCK's mechanism). The scenario acts only through the HTTP API, the webhook endpoint
(every event the emulator records is posted, signed, and its worker job run, in Stripe's order)
and the metering stand-in's HTTP API.

At the end it compares, per currency, what consumers see through our API with Stripe's (the
emulator's) invoices and the traffic it generated with the usage Stripe billed, and exits 1 on
any drift. Fault injection and the full oracle (earnings, keys, orphans) are not part of it yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from app import clock
from app.config import Settings
from app.stripe.test_clocks import TestClockTime
from app.subscriptions.service import add_months

HOUR = 3600
DAY = 86400

# creator, currency, monthly price, per-call price (major units; JPY has none below the yen)
CATALOG = (
    ("sim-creator-usd", "usd", Decimal("29"), Decimal("0.25")),
    ("sim-creator-eur", "eur", Decimal("19"), Decimal("0.5")),
    ("sim-creator-jpy", "jpy", Decimal("3000"), Decimal("3")),
)
FAILING_CARD = "pm_card_chargeCustomerFail"
DELIVERY_WINDOW = 8  # with faults, deliveries are shuffled within windows of this many
OUR_STATUS = {"trialing": "trial", "canceled": "cancelled"}  # Stripe's word -> ours, where they differ


@dataclass(frozen=True, slots=True)
class Scenario:
    consumers: int
    months: int
    seed: int
    # Webhooks delivered two or three times and shuffled (the one fault injected so far).
    faults: bool = False


@dataclass(frozen=True, slots=True)
class SimulatedConsumer:
    """One consumer's script, decided by the seed before anything runs."""

    user_id: str
    creator: int  # index into CATALOG
    pay_per_use: bool
    daily_calls: tuple[int, ...]  # successful calls per simulated day
    card_fails_from_month: int | None


def plan_scenario(scenario: Scenario) -> list[SimulatedConsumer]:
    """The same seed gives the same consumers, plans, traffic and failing cards."""
    rng = random.Random(scenario.seed)  # noqa: S311  (a simulation, not security)
    days = scenario.months * 31
    consumers = []
    for index in range(scenario.consumers):
        pay_per_use = rng.random() < 0.5
        # A card that starts failing: only on monthly plans (metered traffic after a cancellation
        # would be metered but, rightly, never billed).
        fails = not pay_per_use and scenario.months > 1 and rng.random() < 0.15
        consumers.append(
            SimulatedConsumer(
                user_id=f"sim-{scenario.seed}-{index}",
                creator=rng.randrange(len(CATALOG)),
                pay_per_use=pay_per_use,
                daily_calls=tuple(rng.randrange(0, 200) if pay_per_use else 0 for _ in range(days)),
                card_fails_from_month=1 if fails else None,
            )
        )
    return consumers


@dataclass
class CurrencyTotals:
    invoices_ours: int = 0
    invoices_stripe: int = 0
    paid_ours: int = 0
    paid_stripe: int = 0
    calls_metered: int = 0
    calls_billed: int = 0
    # Subscriptions by status, ours (through the API) and Stripe's, in our words.
    statuses_ours: dict[str, int] = field(default_factory=dict)
    statuses_stripe: dict[str, int] = field(default_factory=dict)


@dataclass
class SimulationReport:
    scenario: Scenario
    totals: dict[str, CurrencyTotals] = field(default_factory=dict)
    events: int = 0
    deliveries: int = 0
    failed_events: int = 0
    seconds: float = 0.0

    @property
    def drift(self) -> bool:
        return self.failed_events > 0 or any(
            t.invoices_ours != t.invoices_stripe
            or t.paid_ours != t.paid_stripe
            or t.calls_metered != t.calls_billed
            or t.statuses_ours != t.statuses_stripe
            for t in self.totals.values()
        )


class Relay:
    """The emulator's new events posted to our webhook endpoint, signed, and processed by the worker
    job, oldest first (Stripe lists them newest first)."""

    def __init__(
        self,
        api: httpx.AsyncClient,
        stripe: httpx.AsyncClient,
        secret: str,
        ctx: dict[str, Any],
        faults: random.Random | None = None,
    ) -> None:
        self._api, self._stripe, self._secret, self._ctx = api, stripe, secret, ctx
        self._faults = faults
        self._last: str | None = None
        self.outcomes: dict[str, str | None] = {}
        self.deliveries = 0

    async def mark(self) -> None:
        newest = (await self._stripe.get("/v1/events", params={"limit": 1})).json()["data"]
        self._last = newest[0]["id"] if newest else None

    async def deliver(self) -> int:
        """Deliver what is new; with faults, each event two or three times, shuffled within a window
        of DELIVERY_WINDOW deliveries. A job that asks to be retried runs again after the others, as
        the worker's backoff would have it, until its last attempt."""
        from arq import Retry

        from app.webhooks.jobs import process_stripe_event
        from app.webhooks.processor import MAX_ATTEMPTS

        events = await self._new_events()
        if events:
            self._last = events[-1]["id"]
        deliveries = list(events)
        if self._faults is not None:
            deliveries = [e for e in events for _ in range(self._faults.randint(2, 3))]
            for start in range(0, len(deliveries), DELIVERY_WINDOW):
                window = deliveries[start : start + DELIVERY_WINDOW]
                self._faults.shuffle(window)
                deliveries[start : start + DELIVERY_WINDOW] = window
        pending = [(event, 1) for event in deliveries]
        while pending:
            retries = []
            for event, attempt in pending:
                if attempt == 1:
                    await self._post(event)
                try:
                    outcome = await process_stripe_event({**self._ctx, "job_try": attempt}, event["id"])
                except Retry:
                    if attempt >= MAX_ATTEMPTS:
                        raise
                    retries.append((event, attempt + 1))
                    continue
                if self.outcomes.get(event["id"]) != "failed":
                    self.outcomes[event["id"]] = outcome
            pending = retries
        return len(events)

    async def _post(self, event: dict[str, Any]) -> None:
        body = orjson.dumps(event)
        stamp = int(time.time())  # wall clock: Stripe signs with the real time of delivery
        signature = hmac.new(self._secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        response = await self._api.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": f"t={stamp},v1={signature}"}
        )
        response.raise_for_status()
        self.deliveries += 1

    async def _new_events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        older_than: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"starting_after": older_than} if older_than else {})}
            page = (await self._stripe.get("/v1/events", params=params)).json()
            for event in page["data"]:
                if event["id"] == self._last:
                    return found[::-1]
                found.append(event)
            if not page["has_more"] or not page["data"]:
                return found[::-1]
            older_than = page["data"][-1]["id"]


def _token(settings: Settings, user_id: str, role: str) -> dict[str, str]:
    claims = {
        "sub": user_id,
        "email": f"{user_id}@sim.example",
        "custom:user_type": role,
        "exp": datetime.now(UTC) + timedelta(hours=6),  # wall clock: a JWT's expiry is real time
    }
    encoded = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    return {"Authorization": f"Bearer {encoded}"}


async def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return dict(response.json())


async def _advance_all(stripe: httpx.AsyncClient, clock_ids: list[str], moment: int) -> None:
    for clock_id in clock_ids:
        await _ok(
            await stripe.post(
                f"/v1/test_helpers/test_clocks/{clock_id}/advance", data={"frozen_time": moment}
            )
        )
    for clock_id in clock_ids:
        for _ in range(6000):
            found = await _ok(await stripe.get(f"/v1/test_helpers/test_clocks/{clock_id}"))
            if found["status"] == "ready":
                break
            if found["status"] == "internal_failure":
                raise RuntimeError(f"test clock {clock_id} failed to advance")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def _harness(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    from arq.connections import RedisSettings, create_pool

    from app.main import create_app
    from app.resources import Resources
    from app.worker.context import RESOURCES

    application = create_app(settings)
    resources = Resources.open(settings, jobs=True)
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    transport = httpx.ASGITransport(app=application)
    try:
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=transport, base_url="http://billing.sim", timeout=60) as api,
        ):
            yield api, {RESOURCES: resources, "redis": redis, "job_try": 1}
    finally:
        await redis.aclose()
        await resources.close()


async def run_scenario(
    settings: Settings, scenario: Scenario, *, progress: Callable[[str, int, int], None] | None = None
) -> SimulationReport:
    """Run the scenario against the stack `settings` names (the dev emulator as Stripe, the
    metering stand-in as METERING_SERVICE_URL) and compare what it left."""
    started = time.monotonic()
    report = SimulationReport(scenario)
    consumers = plan_scenario(scenario)
    key = (settings.stripe_secret_key.get_secret_value(), "")
    say = progress or (lambda stage, done, total: None)
    async with (
        httpx.AsyncClient(base_url=str(settings.stripe_api_base), auth=key, timeout=60) as stripe,
        httpx.AsyncClient(base_url=settings.metering_service_url, timeout=30) as metering,
        _harness(settings) as (api, ctx),
    ):
        faults = random.Random(scenario.seed + 1) if scenario.faults else None  # noqa: S311
        relay = Relay(api, stripe, settings.webhook_secrets[0], ctx, faults)
        await relay.mark()
        start = int(time.time())  # the simulation starts now, on a clock of its own
        sim_clock = (
            await _ok(await stripe.post("/v1/test_helpers/test_clocks", data={"frozen_time": start}))
        )["id"]
        with clock.use(TestClockTime(settings, sim_clock, refresh_seconds=0)):
            plans = await _publish_plans(api, settings)
            subscriptions: dict[str, dict[str, Any]] = {}
            customers: dict[str, str] = {}
            clock_ids: list[str] = []
            for index, consumer in enumerate(consumers):
                say("subscribing", index, len(consumers))
                headers = _token(settings, consumer.user_id, "consumer")
                registered = await _ok(await api.post("/api/v1/consumers/register", headers=headers))
                customers[consumer.user_id] = registered["stripe_customer_id"]
                # One clock per consumer: an existing customer joins a clock as the clock is made.
                made = await stripe.post(
                    "/v1/test_helpers/test_clocks",
                    data={"frozen_time": start, "customer": registered["stripe_customer_id"]},
                )
                clock_ids.append((await _ok(made))["id"])
                await _ok(
                    await api.post(
                        "/api/v1/payment-methods", json={"payment_method_id": "pm_card_visa"}, headers=headers
                    )
                )
                plan = plans[(consumer.creator, consumer.pay_per_use)]
                body = {"api_id": plan["api_id"], "pricing_plan_id": plan["id"]}
                subscriptions[consumer.user_id] = await _ok(
                    await api.post("/api/v1/subscriptions", json=body, headers=headers)
                )
            report.events += await relay.deliver()

            day = 0
            for month in range(scenario.months):
                say("months", month, scenario.months)
                for consumer in consumers:
                    if consumer.card_fails_from_month == month:
                        headers = _token(settings, consumer.user_id, "consumer")
                        card = await _ok(
                            await api.post(
                                "/api/v1/payment-methods",
                                json={"payment_method_id": FAILING_CARD},
                                headers=headers,
                            )
                        )
                        await _ok(
                            await api.put(f"/api/v1/payment-methods/{card['id']}/default", headers=headers)
                        )
                # Every subscription started at `start`: their periods end together, as Stripe counts months.
                period_end = int(add_months(datetime.fromtimestamp(start, UTC), month + 1).timestamp())
                # Every simulated day of the period: its traffic, counted by the metering stand-in.
                while start + (day + 1) * DAY <= period_end:
                    when = datetime.fromtimestamp(start + day * DAY, UTC).date()
                    for consumer in consumers:
                        calls = consumer.daily_calls[day] if day < len(consumer.daily_calls) else 0
                        if calls:
                            url = f"/api/v1/usage/subscription/{subscriptions[consumer.user_id]['id']}/calls"
                            await metering.post(url, json={"day": when.isoformat(), "successful": calls})
                    day += 1
                for moment in (period_end, period_end + 2 * HOUR):
                    await _advance_all(stripe, [*clock_ids, sim_clock], moment)
                    report.events += await relay.deliver()
            say("months", scenario.months, scenario.months)
            await _compare(report, api, stripe, settings, consumers, customers, day)
    report.failed_events = sum(1 for outcome in relay.outcomes.values() if outcome == "failed")
    report.deliveries = relay.deliveries
    report.seconds = time.monotonic() - started
    return report


async def _publish_plans(
    api: httpx.AsyncClient, settings: Settings
) -> dict[tuple[int, bool], dict[str, Any]]:
    plans = {}
    for index, (creator, currency, monthly, per_call) in enumerate(CATALOG):
        headers = _token(settings, creator, "creator")
        api_id = f"{creator}-api-{uuid.uuid4().hex[:6]}"
        offers = {
            False: {"name": "Monthly", "type": "subscription", "monthly_price": str(monthly)},
            True: {"name": "Metered", "type": "pay_per_use", "price_per_call": str(per_call)},
        }
        for pay_per_use, plan in offers.items():
            plans[(index, pay_per_use)] = await _ok(
                await api.post(
                    f"/api/v1/apis/{api_id}/plans", json={**plan, "currency": currency}, headers=headers
                )
            )
    return plans


async def _compare(
    report: SimulationReport,
    api: httpx.AsyncClient,
    stripe: httpx.AsyncClient,
    settings: Settings,
    consumers: list[SimulatedConsumer],
    customers: dict[str, str],
    days: int,
) -> None:
    """Per currency: our invoices as consumers see them vs Stripe's, and calls made vs billed."""
    for consumer in consumers:
        currency = CATALOG[consumer.creator][1]
        totals = report.totals.setdefault(currency, CurrencyTotals())
        headers = _token(settings, consumer.user_id, "consumer")
        ours = (await _ok(await api.get("/api/v1/invoices", params={"limit": 100}, headers=headers)))[
            "invoices"
        ]
        totals.invoices_ours += len(ours)
        totals.paid_ours += sum(int(i["amount_paid"]) for i in ours)
        listed = (
            await _ok(
                await stripe.get(
                    "/v1/invoices", params={"customer": customers[consumer.user_id], "limit": 100}
                )
            )
        )["data"]
        totals.invoices_stripe += len(listed)
        totals.paid_stripe += sum(int(i["amount_paid"]) for i in listed)
        for ours_sub in (await _ok(await api.get("/api/v1/subscriptions", headers=headers)))["subscriptions"]:
            totals.statuses_ours[ours_sub["status"]] = totals.statuses_ours.get(ours_sub["status"], 0) + 1
        theirs = await _ok(
            await stripe.get(
                "/v1/subscriptions", params={"customer": customers[consumer.user_id], "status": "all"}
            )
        )
        for sub in theirs["data"]:
            status = OUR_STATUS.get(sub["status"], sub["status"])
            totals.statuses_stripe[status] = totals.statuses_stripe.get(status, 0) + 1
        if consumer.pay_per_use:
            totals.calls_metered += sum(consumer.daily_calls[:days])
            totals.calls_billed += sum(
                int(line.get("quantity") or 0)
                for invoice in listed
                if invoice.get("billing_reason") == "subscription_cycle"
                for line in invoice["lines"]["data"]
            )


@asynccontextmanager
async def embedded_stack(data_dir: Path) -> AsyncIterator[Settings]:
    """A throwaway stack for one run: PostgreSQL (a fresh database), Redis, the Stripe emulator and
    the API key and metering stand-ins, all on 127.0.0.1, stopped at the end."""
    import asyncpg

    from app.config import load_settings
    from app.db.migrate import upgrade
    from app.dev.processes import (
        EmbeddedPostgres,
        free_port,
        redis_server,
        siblings_emulator,
        stripe_emulator,
    )
    from app.dev.stack import DEV_JWT_SECRET, DEV_STRIPE_KEY, DEV_WEBHOOK_SECRET

    postgres = EmbeddedPostgres(data_dir / "pg")
    children = []
    try:
        uri = await asyncio.to_thread(postgres.start)
        name = f"billing_sim_{uuid.uuid4().hex[:8]}"
        connection = await asyncpg.connect(uri.replace("postgresql://", "postgres://"))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        database_url = uri.replace("/postgres?", f"/{name}?")
        await asyncio.to_thread(upgrade, database_url)
        ports = {part: free_port() for part in ("redis", "stripe", "siblings")}
        children = [
            redis_server(data_dir / "redis", ports["redis"], persist=False),
            stripe_emulator(ports["stripe"], None, data_dir / "stripe.log"),
            siblings_emulator(ports["siblings"], None, data_dir / "siblings.log"),
        ]
        for child in children:
            await asyncio.to_thread(child.start, 30)
        siblings = f"http://127.0.0.1:{ports['siblings']}"
        yield load_settings(
            database_url=database_url,
            redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
            stripe_secret_key=DEV_STRIPE_KEY,
            stripe_api_base=f"http://127.0.0.1:{ports['stripe']}",
            stripe_webhook_secret=DEV_WEBHOOK_SECRET,
            jwt_secret=DEV_JWT_SECRET,
            api_key_service_url=siblings,
            metering_service_url=siblings,
            stripe_max_network_retries=0,
            log_level="WARNING",
        )
    finally:
        for child in reversed(children):
            child.stop()
        postgres.stop()
