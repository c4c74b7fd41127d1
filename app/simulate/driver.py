"""Plays a scenario through our HTTP API, our webhook endpoint and our worker's jobs.

Every consumer's Stripe customer lives on its own emulator test clock; all clocks and our
business clock move together, step by step, through the moments something happens (joins,
actions, each period's end and the hour after it). At each step the
driver relays the events the emulator sent to `POST /webhooks/stripe` and runs the worker's
jobs (event processing, usage aggregation, API key delivery, dunning) as the worker would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import httpx
import jwt
import orjson
from arq import Retry
from sqlalchemy import select

from app import clock
from app.config import Settings
from app.dunning.jobs import suspend_overdue_api_keys
from app.models import OutboxMessage, StripeEvent
from app.outbox.jobs import deliver_outbox_message
from app.simulate.faults import Faults
from app.simulate.scenario import DAY, ConsumerSpec, Scenario, add_months
from app.usage.jobs import aggregate_usage
from app.webhooks.jobs import process_stripe_event
from app.worker.context import job_context
from app.worker.settings import WorkerSettings

Progress = Callable[[int, int, int], None]  # (steps done, steps in all, simulated moment reached)
RETRYABLE = frozenset({409, 500, 502, 503, 504})
# Stripe redelivers an event our endpoint did not take (over days; here, within the step): ten
# attempts wait out about 100 s of a database too busy to store it, as a loaded machine has.
WEBHOOK_ATTEMPTS = 10
WEBHOOK_BACKOFF_SECONDS = 0.1
WEBHOOK_POSTS = 8  # webhook deliveries in flight at once
CLIENTS = 8  # consumers and creators acting at the same moment, in flight at once
log = logging.getLogger("app.simulate")
T = TypeVar("T")
USAGE_RUNS_PER_MOMENT = 5  # the usage cron's runs in the minutes of one moment, until all is sent


class SimulationError(RuntimeError):
    """The API refused a step of the scenario for good (a defect, not a fault)."""


@dataclass
class Stack:
    """What the driver talks to: our API, the emulator (directly, for what a Stripe user does
    in the dashboard: clocks, refunds, disputes), the sibling stand-ins and the worker's ctx."""

    api: httpx.AsyncClient
    stripe: httpx.AsyncClient
    siblings: httpx.AsyncClient
    worker: dict[str, Any]
    settings: Settings
    business: clock.ManualClock


@dataclass
class ConsumerRun:
    spec: ConsumerSpec
    headers: dict[str, str]
    customer: str = ""
    clock_id: str = ""
    subscription_id: str = ""
    stripe_subscription_id: str | None = None
    traffic_until: date | None = None  # the last day whose calls were sent to metering


@dataclass
class CreatorRun:
    key: str
    headers: dict[str, str]
    api_id: str
    plan_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What the run made: our ids and Stripe's, per scenario key (read by the report)."""

    creators: dict[str, CreatorRun] = field(default_factory=dict)
    consumers: dict[str, ConsumerRun] = field(default_factory=dict)
    horizon: int = 0
    steps: int = 0
    webhooks: int = 0
    webhooks_redelivered: int = 0  # deliveries our endpoint answered 5xx, sent again as Stripe does
    jobs_failed: int = 0  # worker jobs that failed (not a fault injected), their work done later
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per part of the run

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()  # wall clock: how long the run's parts take
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started


def _exponent(currency: str) -> int:
    return 0 if currency == "jpy" else 2


def major(minor: Decimal | int, currency: str) -> str:
    """A minor-unit amount as the API's major-unit decimal string."""
    return format((Decimal(minor) / Decimal(10) ** _exponent(currency)).normalize(), "f")


class Driver:
    def __init__(self, stack: Stack, scenario: Scenario, faults: Faults) -> None:
        self._stack = stack
        self._scenario = scenario
        self._faults = faults
        self.record = RunRecord()
        self._last_event: str | None = None
        # The moments each consumer's clock must reach (others may lag: nothing is due on them).
        self._due: dict[str, set[int]] = {}
        self._aggregated_at: datetime | None = None
        self._jobs = asyncio.Semaphore(WorkerSettings.max_jobs)
        self._posts = asyncio.Semaphore(WEBHOOK_POSTS)
        self._clients = asyncio.Semaphore(CLIENTS)
        self._passing = asyncio.Lock()
        self._deferred: list[tuple[str, int]] = []  # event jobs arq would run again, and their try

    def moments(self) -> list[int]:
        """Every moment the run stops at, in order; the last is the horizon."""
        scenario = self._scenario
        horizon = scenario.end + 2 * 3600 + 60
        found: set[int] = set()
        for consumer in scenario.consumers:
            due = {consumer.joins_at, horizon, *(action.at for action in consumer.actions)}
            period_end = add_months(consumer.joins_at, 1)
            while period_end <= scenario.end:
                due.update((period_end + 60, period_end + 2 * 3600))
                period_end = add_months(period_end, 1)
            self._due[consumer.key] = due
            found |= due
        found.update(change.at for creator in scenario.creators.values() for change in creator.price_changes)
        self.record.horizon = horizon
        return sorted(m for m in found if m <= horizon)

    def _needs_clock(self, run: ConsumerRun, moment: int) -> bool:
        """Its own moments, or every step while Stripe may be retrying its payments."""
        if any(action.kind == "card_fails" for action in run.spec.actions):
            return True
        return moment in self._due.get(run.spec.key, set())

    async def run(self, progress: Progress | None = None) -> RunRecord:
        await self._newest_event()
        moments = self.moments()
        self._stack.business.set(datetime.fromtimestamp(moments[0], UTC))
        await self._create_creators()
        for done, moment in enumerate(moments, start=1):
            await self._step(moment)
            self.record.steps = done
            if progress is not None:
                progress(done, len(moments), moment)
        return self.record

    # ---- one step ---------------------------------------------------------------------------

    async def _step(self, moment: int) -> None:
        self._stack.business.set(datetime.fromtimestamp(moment, UTC))
        # Metering has counted every call up to now before the worker sees a day end.
        await self._send_traffic(moment)
        with self.record.timed("advancing test clocks"):
            await self._advance_clocks(moment)
        await self._worker_pass()
        for creator in self._scenario.creators.values():
            for change in creator.price_changes:
                if change.at == moment:
                    await self._change_price(creator.key, change.kind, change.monthly)
        # Consumers act side by side, as many clients of one API do.
        await asyncio.gather(
            *(self._client(self._join(spec)) for spec in self._scenario.consumers if spec.joins_at == moment)
        )
        await asyncio.gather(
            *(
                self._client(self._act(run, action.kind))
                for run in list(self.record.consumers.values())
                for action in run.spec.actions
                if action.at == moment
            )
        )
        await self._send_traffic(moment)
        await self._worker_pass()

    async def _client(self, work: Awaitable[None]) -> None:
        async with self._clients:
            await work

    async def _advance_clocks(self, moment: int) -> None:
        clocks = [
            run.clock_id
            for run in self.record.consumers.values()
            if run.clock_id and self._needs_clock(run, moment)
        ]
        stripe = self._stack.stripe

        async def advance(clock_id: str) -> None:
            path = f"/v1/test_helpers/test_clocks/{clock_id}"
            answer = await stripe.post(f"{path}/advance", data={"frozen_time": moment})
            if answer.status_code != 200:
                raise SimulationError(f"advancing {clock_id}: {answer.text}")
            for _ in range(2000):
                found = (await stripe.get(path)).json()
                if found["status"] == "ready":
                    return
                if found["status"] != "advancing":
                    raise SimulationError(f"test clock {clock_id} is {found['status']}")
                await asyncio.sleep(0.01)
            raise SimulationError(f"test clock {clock_id} never became ready")

        for first in range(0, len(clocks), 50):
            await asyncio.gather(*(advance(c) for c in clocks[first : first + 50]))

    # ---- the worker -------------------------------------------------------------------------

    async def _worker_pass(self) -> None:
        """What the worker does meanwhile, its jobs side by side as arq runs them (up to
        `max_jobs` at once): the events and the usage cron, then key delivery and dunning, then
        what those made Stripe send. One pass at a time (a retried API call may ask for one)."""
        async with self._passing:
            await self._one_pass()

    async def _one_pass(self) -> None:
        ctx = self._stack.worker
        timed = self.record.timed

        async def events() -> None:
            with timed("webhooks"):
                await self._relay_events()
                await self._retry_pending_events()

        async def usage() -> None:
            with timed("usage job"):
                await self._usage_cron()

        await asyncio.gather(events(), usage())
        with timed("webhooks"):
            await self._run_deferred()
        with timed("key delivery and dunning jobs"):
            await asyncio.gather(self._deliver_outbox(), self._job(partial(suspend_overdue_api_keys, ctx)))
        with timed("webhooks"):
            relayed = await self._relay_events()  # what the jobs made Stripe send
            if relayed:
                await self._retry_pending_events()
            await self._run_deferred()
        if relayed:
            with timed("key delivery and dunning jobs"):
                await self._deliver_outbox()

    async def _usage_cron(self) -> None:
        """The usage cron, once per moment: it runs every few minutes, so windows a run could not
        send (Stripe down, metering slow) are sent by the next runs minutes later, not days later
        when the next moment comes (past Stripe's 24 h replay memory they would be quarantined)."""
        now = self._stack.business.now()
        if self._aggregated_at == now:
            return
        self._aggregated_at = now
        for _ in range(USAGE_RUNS_PER_MOMENT):
            outcome = await self._job(partial(aggregate_usage, self._stack.worker))
            if outcome is None:
                self._aggregated_at = None  # failed: run again at the next pass
                return
            if not outcome["stripe_failures"] and not outcome["unavailable"]:
                return

    async def _job(self, job: Callable[[], Awaitable[T]]) -> T | None:
        """One job on the worker, faulted, waiting for a free slot as arq's `max_jobs` does; None
        when it failed (say no database connection came free in time on a loaded machine): as arq
        does, the failure is logged and the worker goes on, and what the job had to do is still
        there for the next run of it (the event stays pending, the outbox message too, and the
        usage cron runs again at the next pass)."""
        async with self._jobs:
            try:
                return await self._faults.run_job(job)
            except (Retry, SimulationError):
                raise
            except Exception:
                self.record.jobs_failed += 1
                log.warning("worker job failed; a later run takes its work up", exc_info=True)
                return None

    async def _event_job(self, event_id: str, attempt: int = 1) -> None:
        """The event's job; one that asks to be retried (arq's `Retry`, e.g. while the usage cron
        holds the invoice's windows) runs again, as its next try, once this phase's jobs are done."""
        ctx = {**self._stack.worker, "job_try": attempt}
        try:
            await self._job(partial(process_stripe_event, ctx, event_id))
        except Retry:
            self._deferred.append((event_id, attempt + 1))

    async def _run_deferred(self) -> None:
        while self._deferred:
            due, self._deferred = self._deferred, []
            await asyncio.gather(*(self._event_job(event_id, attempt) for event_id, attempt in due))

    async def _relay_events(self) -> int:
        """Deliver the emulator's new events to our webhook, faulted, and process each delivery."""
        # Our webhook endpoint is not subscribed to test clock events (nothing of ours follows them).
        with self.record.timed("listing Stripe events"):
            listed = await self._new_events()
        events = [e for e in listed if not str(e["type"]).startswith("test_helpers.")]
        if not events:
            return 0
        started: set[str] = set()
        jobs: list[asyncio.Task[None]] = []

        async def deliver(item: dict[str, Any]) -> None:
            body = orjson.dumps(item)
            for attempt in range(WEBHOOK_ATTEMPTS):
                async with self._posts:  # Stripe delivers several events at once
                    answer = await self._stack.api.post(
                        "/webhooks/stripe", content=body, headers={"Stripe-Signature": self._sign(body)}
                    )
                if answer.status_code == 200 or answer.status_code not in RETRYABLE:
                    break
                # Stripe sends an event again, with backoff, until our endpoint answers 2xx.
                self.record.webhooks_redelivered += 1
                await asyncio.sleep(WEBHOOK_BACKOFF_SECONDS * 2**attempt)  # wall clock: a pause
            if answer.status_code != 200:
                raise SimulationError(f"webhook {item['id']} answered {answer.status_code}: {answer.text}")
            self.record.webhooks += 1
            event_id = str(item["id"])
            if event_id not in started:  # arq runs one job per event id (`stripe:<id>`)
                started.add(event_id)
                jobs.append(asyncio.ensure_future(self._event_job(event_id)))

        await asyncio.gather(*(deliver(item) for item in self._faults.deliveries(events)))
        await asyncio.gather(*jobs)
        return len(events)

    async def _retry_pending_events(self) -> None:
        """arq retries a failed event job with backoff; here, at the next pass."""
        ctx = self._stack.worker
        async with job_context(ctx).resources.sessionmaker() as session:
            pending = (
                await session.execute(
                    select(StripeEvent.id)
                    .where(StripeEvent.status.in_(("pending", "processing", "failed")))
                    .order_by(StripeEvent.stripe_created)
                )
            ).scalars()
            ids = list(pending)
        await asyncio.gather(*(self._event_job(str(event_id)) for event_id in ids))

    async def _deliver_outbox(self) -> None:
        ctx = self._stack.worker
        for _ in range(5):
            async with job_context(ctx).resources.sessionmaker() as session:
                ids = list(
                    (
                        await session.execute(
                            select(OutboxMessage.id)
                            .where(OutboxMessage.status == "pending")
                            .order_by(OutboxMessage.created_at)
                        )
                    ).scalars()
                )
            if not ids:
                return
            await asyncio.gather(
                *(self._job(partial(deliver_outbox_message, ctx, str(message_id))) for message_id in ids)
            )

    def _sign(self, body: bytes) -> str:
        secret = self._stack.settings.stripe_webhook_secret.get_secret_value().split(",")[0].strip()
        at = int(time.time())  # wall clock: Stripe signs with the real time of delivery
        signature = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
        return f"t={at},v1={signature}"

    async def _newest_event(self) -> None:
        newest = (await self._stack.stripe.get("/v1/events", params={"limit": 1})).json()["data"]
        self._last_event = newest[0]["id"] if newest else None

    async def _new_events(self) -> list[dict[str, Any]]:
        """The emulator's events after the last relayed one, oldest first: Stripe's `ending_before`
        pages forward from it (each page newest first)."""
        if self._last_event is None:
            await self._newest_event()
            if self._last_event is None:
                return []
        found: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": 100, "ending_before": self._last_event}
            page = (await self._stack.stripe.get("/v1/events", params=params)).json()
            newer = list(reversed(page["data"]))
            found.extend(newer)
            if newer:
                self._last_event = newer[-1]["id"]
            if not page["has_more"] or not newer:
                return found

    # ---- the API, as the frontend calls it ----------------------------------------------------

    def _token(self, user_id: str, role: str) -> dict[str, str]:
        expires = datetime.now(UTC) + timedelta(hours=12)  # wall clock: JWT expiry
        claims = {"sub": user_id, "email": f"{user_id}@example.com", "custom:user_type": role, "exp": expires}
        secret = self._stack.settings.jwt_secret.get_secret_value()
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}

    async def _call(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call, retried like a careful client: same Idempotency-Key, on 409 and 5xx."""
        key = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
        answer: httpx.Response | None = None
        for _ in range(12):
            guard = self._faults.maybe_crash() if method != "GET" else nullcontext()
            with guard, self.record.timed("API requests"):
                answer = await self._stack.api.request(method, path, json=body, headers={**headers, **key})
            if answer.status_code < 300:
                return dict(answer.json()) if answer.content else {}
            if answer.status_code not in RETRYABLE:
                break
            await self._worker_pass()  # e.g. 409 not_synced: a webhook is still to be processed
        status, text = (answer.status_code, answer.text) if answer is not None else (0, "")
        raise SimulationError(f"{method} {path} answered {status}: {text}")

    async def _create_creators(self) -> None:
        for spec in self._scenario.creators.values():
            run = CreatorRun(
                spec.key, self._token(spec.key, "creator"), f"api-{spec.key}-{self._scenario.seed}"
            )
            for kind, plan in spec.plans.items():
                body: dict[str, Any] = {"name": kind.title(), "currency": plan.currency}
                if kind == "free":
                    body["type"] = "free"
                elif kind == "metered":
                    body.update(type="pay_per_use", price_per_call=major(plan.per_call, plan.currency))
                elif kind == "overage":
                    body.update(
                        type="subscription",
                        monthly_price=major(plan.monthly, plan.currency),
                        call_limit=plan.included,
                        overage_price_per_call=major(plan.per_call, plan.currency),
                    )
                else:
                    body.update(type="subscription", monthly_price=major(plan.monthly, plan.currency))
                created = await self._call("POST", f"/api/v1/apis/{run.api_id}/plans", run.headers, body)
                run.plan_ids[kind] = str(created["id"])
            self.record.creators[spec.key] = run

    async def _change_price(self, creator: str, kind: str, monthly: int) -> None:
        run = self.record.creators[creator]
        currency = self._scenario.creators[creator].currency
        await self._call(
            "PUT",
            f"/api/v1/apis/{run.api_id}/plans/{run.plan_ids[kind]}",
            run.headers,
            {"monthly_price": major(monthly, currency)},
        )

    async def _join(self, spec: ConsumerSpec) -> None:
        user_id = f"{spec.key}-{self._scenario.seed}"
        run = ConsumerRun(spec, self._token(user_id, "consumer"))
        registered = await self._call("POST", "/api/v1/consumers/register", run.headers)
        run.customer = str(registered["stripe_customer_id"])
        made = await self._stack.stripe.post(
            "/v1/test_helpers/test_clocks",
            data={"frozen_time": spec.joins_at, "customer": run.customer, "name": spec.key},
        )
        if made.status_code != 200:
            raise SimulationError(f"test clock for {spec.key}: {made.text}")
        run.clock_id = str(made.json()["id"])
        self.record.consumers[spec.key] = run
        await self._call(
            "POST", "/api/v1/payment-methods", run.headers, {"payment_method_id": "pm_card_visa"}
        )
        creator = self.record.creators[spec.creator]
        subscribed = await self._call(
            "POST",
            "/api/v1/subscriptions",
            run.headers,
            {"api_id": creator.api_id, "pricing_plan_id": creator.plan_ids[spec.plan]},
        )
        run.subscription_id = str(subscribed["id"])
        run.stripe_subscription_id = subscribed.get("stripe_subscription_id")

    async def _act(self, run: ConsumerRun, kind: str) -> None:
        path = f"/api/v1/subscriptions/{run.subscription_id}"
        creator = self.record.creators[run.spec.creator]
        if kind in ("upgrade", "downgrade"):
            target = creator.plan_ids["pro" if kind == "upgrade" else "basic"]
            await self._call("PUT", f"{path}/upgrade", run.headers, {"new_pricing_plan_id": target})
        elif kind in ("cancel_at_period_end", "cancel_now"):
            await self._call("PUT", f"{path}/cancel", run.headers, {"immediately": kind == "cancel_now"})
        elif kind in ("card_fails", "card_recovers"):
            card = "pm_card_chargeCustomerFail" if kind == "card_fails" else "pm_card_visa"
            added = await self._call(
                "POST", "/api/v1/payment-methods", run.headers, {"payment_method_id": card}
            )
            await self._call("PUT", f"/api/v1/payment-methods/{added['id']}/default", run.headers)
        elif kind in ("refund", "dispute"):
            await self._take_back(run, kind)

    async def _take_back(self, run: ConsumerRun, kind: str) -> None:
        """Refund in full, or lose a dispute on, the consumer's latest paid invoice (Stripe-side)."""
        stripe = self._stack.stripe
        listed = (await stripe.get("/v1/invoices", params={"customer": run.customer, "limit": 100})).json()[
            "data"
        ]
        paid = [i for i in listed if i["status"] == "paid" and int(i["amount_paid"]) > 0]
        if not paid:
            raise SimulationError(f"{run.spec.key} has no paid invoice to {kind}")
        latest = max(paid, key=lambda i: (int(i["created"]), i["id"]))
        intent = (await stripe.get(f"/v1/payment_intents/{latest['payment_intent']}")).json()
        charge = intent["latest_charge"]
        charge_id = charge["id"] if isinstance(charge, dict) else charge
        if kind == "refund":
            answer = await stripe.post(
                "/v1/refunds",
                data={"charge": charge_id},
                headers={"Idempotency-Key": f"sim-refund-{charge_id}"},
            )
        else:
            opened = await stripe.post(f"/v1/test_helpers/charges/{charge_id}/dispute")
            if opened.status_code != 200:
                raise SimulationError(f"dispute on {charge_id}: {opened.text}")
            answer = await stripe.post(
                f"/v1/test_helpers/disputes/{opened.json()['id']}/close", data={"status": "lost"}
            )
        if answer.status_code != 200:
            raise SimulationError(f"{kind} of {charge_id}: {answer.text}")

    async def _send_traffic(self, moment: int) -> None:
        """Each consumer's calls of every day up to today, served by the metering stand-in (one
        request for all of them: the stand-in counts each subscription's day as its own)."""
        today = datetime.fromtimestamp(moment, UTC).date()
        last_day = datetime.fromtimestamp(self._scenario.end - DAY, UTC).date()
        calls: list[dict[str, Any]] = []
        for run in self.record.consumers.values():
            day = run.traffic_until + timedelta(days=1) if run.traffic_until else self._first_day(run)
            while day <= min(today, last_day):
                successful, failed = run.spec.calls_on(day)
                if successful or failed:
                    calls.append(
                        {
                            "subscription_id": run.subscription_id,
                            "day": day.isoformat(),
                            "successful": successful,
                            "failed": failed,
                        }
                    )
                run.traffic_until = day
                day += timedelta(days=1)
        if not calls:
            return
        answer = await self._stack.siblings.post("/api/v1/usage/calls", json={"calls": calls})
        if answer.status_code != 204:
            raise SimulationError(f"metering stand-in answered {answer.status_code}")

    @staticmethod
    def _first_day(run: ConsumerRun) -> date:
        return datetime.fromtimestamp(run.spec.joins_at, UTC).date()
