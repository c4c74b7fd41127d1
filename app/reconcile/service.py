"""`billing reconcile`: compare our store with Stripe, read-only, and keep the report.

Four checks, each against what Stripe holds now:
- invoices: every Stripe invoice against our mirror (status, currency, total, amount paid), and
  every invoice of ours that Stripe does not have;
- earnings: each subscription invoice's creator ledger, per plan (charges, credits, reversals),
  against what the booking and reversal rules give for Stripe's invoice: its lines mapped to our
  plans by price, its total, payment and balances (`app/reconcile/rules.py`);
- usage: per pay-per-use subscription and billing period, the calls we recorded against the
  Billing Meter's event summary for the same customer and span;
- orphans: Stripe subscriptions still live with no row of ours, and our live Stripe-billed rows
  whose Stripe subscription ended or that Stripe never listed.

Nothing here writes to Stripe or to the mirrored tables. Stripe calls keep to the configured
rate; each page's differences, cursor and counts are committed together, so an interrupted run
resumes after its last committed page and finds every difference exactly once. A PostgreSQL
advisory lock keeps runs single.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import clock
from app.db.claims import claim_period
from app.db.runs import settling
from app.db.unit_of_work import unit_of_work
from app.errors import Conflict
from app.models import ReconcileDrift, ReconcileRun
from app.models.reconcile import RECONCILE_CHECKS
from app.models.subscription import LIVE_STATUSES, STRIPE_STATUS, TERMINAL
from app.reconcile.repository import CheckTotals, MeteredRow, ReconcileRepository
from app.reconcile.rows import Drift
from app.reconcile.rules import (
    compare_earnings,
    compare_invoice,
    minute_floor,
    usage_drift_cents,
)
from app.stripe import StripeGateway
from app.stripe.invoices import StripeInvoice
from app.stripe.subscriptions import StripeSubscriptionState
from app.subscriptions.repository import find_subscription
from app.sync.ratelimit import RateLimiter

RECONCILE_LOCK_ID = 0x5_7121_0009  # pg advisory lock key of `billing reconcile`
DONE = "done"
OUR_ROWS_PAGE = 500
METERED_PAGE = 20
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """A run and what it found, per check: objects compared, drift lines, drift per currency."""

    run: ReconcileRun
    checked: dict[str, int]
    totals: dict[str, CheckTotals]
    lines: list[ReconcileDrift]

    @property
    def drift_items(self) -> int:
        return sum(t.items for t in self.totals.values())


class ReconcileService:
    def __init__(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        stripe: StripeGateway,
        *,
        rate_per_second: float,
        commission: Decimal,
        progress: Progress | None = None,
    ) -> None:
        self._engine = engine
        self._sessionmaker = sessionmaker
        self._stripe = stripe
        self._limiter = RateLimiter(rate_per_second)
        self._commission = commission
        self._progress = progress or (lambda _step, _count: None)

    async def run(self, *, since: datetime | None = None, resume: bool = False) -> ReconcileRun:
        """A new run (or, with `resume`, the newest unfinished one) carried to completion."""
        async with self._locked():
            run = await self._resume() if resume else None
            if run is None:
                run = await self._start(since=since)
            return await self._carry(run)

    async def run_for_day(self, day: str, *, since: datetime | None) -> ReconcileRun | None:
        """The daily run for `day`, exactly once: started by whoever claims the day first, resumed
        by a retry if it was interrupted; None if that day's run already completed."""
        async with self._locked():
            async with unit_of_work(self._sessionmaker) as session:
                if await claim_period(session, "reconcile", "stripe", day):
                    run = ReconcileRun(id=uuid.uuid4(), since=since, period=day, cursor={}, checked={})
                    session.add(run)
                else:
                    found = (
                        await session.execute(select(ReconcileRun).where(ReconcileRun.period == day))
                    ).scalar_one_or_none()
                    if found is None or found.status == "completed":
                        return None
                    run = found
                run.status = "running"
            return await self._carry(run)

    async def report(self, run: ReconcileRun, *, lines_per_check: int = 50) -> ReconcileReport:
        """The run's counts and drift totals, with each check's largest drift lines."""
        async with self._sessionmaker() as session:
            repository = ReconcileRepository(session)
            totals = await repository.totals(run.id)
            found = []
            for check in RECONCILE_CHECKS if lines_per_check else ():
                found += await repository.drifts(run.id, check, limit=lines_per_check)
        return ReconcileReport(run, {c: int(run.checked.get(c, 0)) for c in RECONCILE_CHECKS}, totals, found)

    # --- the run -----------------------------------------------------------------------------

    def _locked(self) -> _AdvisoryLock:
        return _AdvisoryLock(self._engine)

    async def _resume(self) -> ReconcileRun | None:
        async with unit_of_work(self._sessionmaker) as session:
            run = (
                await session.execute(
                    select(ReconcileRun)
                    .where(ReconcileRun.status.in_(("running", "interrupted")))
                    .order_by(ReconcileRun.started_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if run is not None:
                run.status = "running"
            return run

    async def _start(self, *, since: datetime | None) -> ReconcileRun:
        async with unit_of_work(self._sessionmaker) as session:
            run = ReconcileRun(id=uuid.uuid4(), status="running", since=since, cursor={}, checked={})
            session.add(run)
        return run

    async def _carry(self, run: ReconcileRun) -> ReconcileRun:
        try:
            with settling(run):
                await self._invoices(run)
                await self._our_invoices(run)
                await self._stripe_subscriptions(run)
                await self._our_subscriptions(run)
                await self._usage(run)
        finally:
            async with unit_of_work(self._sessionmaker) as session:
                await session.merge(run)
                if run.status == "completed":
                    await ReconcileRepository(session).forget_seen(
                        run.id
                    )  # only a run in progress needs them
        return run

    @staticmethod
    async def _commit_page(
        session: AsyncSession, run: ReconcileRun, step: str, position: object,
        counted: dict[str, int], drifts: list[Drift],
    ) -> Callable[[], None]:  # fmt: skip
        """Record a page's differences with the step's new position and counts in the page's
        transaction; returns what moves the run on, to call once that transaction committed."""
        cursor = {**run.cursor, step: position}
        checked = {**run.checked, **{c: int(run.checked.get(c, 0)) + n for c, n in counted.items()}}
        repository = ReconcileRepository(session)
        await repository.record(run.id, drifts)
        await repository.save_progress(run.id, cursor, checked)

        def advance() -> None:
            run.cursor, run.checked = cursor, checked

        return advance

    # --- invoices and earnings ---------------------------------------------------------------

    async def _invoices(self, run: ReconcileRun) -> None:
        starting_after = run.cursor.get("invoices")
        while starting_after != DONE:
            await self._limiter.wait()
            page = await self._stripe.list_invoices(starting_after=starting_after)
            listed = page.objects
            # Stripe lists newest first: the first invoice older than `since` ends the listing.
            invoices = [
                await self._whole_invoice(parsed)
                for parsed in listed
                if run.since is None or (parsed.created and parsed.created >= run.since)
            ]
            more = page.has_more and bool(listed) and len(invoices) == len(listed)
            async with unit_of_work(self._sessionmaker) as session:
                drifts, earnings_checked = await self._compare_invoices(session, invoices)
                position = listed[-1].id if more else DONE
                await ReconcileRepository(session).mark_seen(run.id, "invoice", [i.id for i in invoices])
                counted = {"invoices": len(invoices), "earnings": earnings_checked}
                advance = await self._commit_page(session, run, "invoices", position, counted, drifts)
            advance()
            starting_after = position
            self._progress("invoices", int(run.checked.get("invoices", 0)))

    async def _our_invoices(self, run: ReconcileRun) -> None:
        """Our invoices the listing did not show: fetched one by one (an older one is compared as
        usual), and drift if Stripe has no such invoice."""
        position = run.cursor.get("our_invoices")
        while position != DONE:
            after = uuid.UUID(position) if position else None
            async with self._sessionmaker() as session:
                unseen, last = await ReconcileRepository(session).invoices_not_seen(
                    run.id, since=run.since, created_before=run.started_at, after=after, limit=OUR_ROWS_PAGE
                )
            fetched: list[StripeInvoice] = []
            drifts: list[Drift] = []
            for stripe_id, row in unseen.items():
                await self._limiter.wait()
                found = await self._stripe.retrieve_invoice_or_none(stripe_id)
                if found is not None:
                    fetched.append(await self._whole_invoice(found))
                    continue
                drifts.append(
                    Drift(
                        "invoices", stripe_id, f"{row.status} here, Stripe has no such invoice",
                        row.currency, row.total, None, abs(row.total),
                    )
                )  # fmt: skip
            async with unit_of_work(self._sessionmaker) as session:
                compared, earnings_checked = await self._compare_invoices(session, fetched)
                position = str(last) if last is not None else DONE
                counted = {"invoices": len(unseen), "earnings": earnings_checked}
                advance = await self._commit_page(
                    session, run, "our_invoices", position, counted, drifts + compared
                )
            advance()

    async def _whole_invoice(self, parsed: StripeInvoice) -> StripeInvoice:
        """Stripe's invoice with every line (Stripe embeds the first 10): earnings need them all."""
        if not parsed.more_lines:
            return parsed
        await self._limiter.wait()
        return await self._stripe.with_all_lines(parsed)

    async def _compare_invoices(
        self, session: AsyncSession, invoices: list[StripeInvoice]
    ) -> tuple[list[Drift], int]:
        repository = ReconcileRepository(session)
        ours = await repository.invoices([i.id for i in invoices])
        customers = await repository.our_customers([i.customer for i in invoices if i.customer])
        our_ids = [row.id for row in ours.values()]
        ledger = await repository.ledger_nets(our_ids)
        reversed_totals = await repository.reversed_totals(our_ids)
        catalog = await repository.plan_catalog(
            sorted({line.price_id for i in invoices for line in i.lines if line.price_id}),
            sorted({i.subscription for i in invoices if i.subscription}),
        )
        drifts: list[Drift] = []
        earnings_checked = 0
        for invoice in invoices:
            row = ours.get(invoice.id)
            drift = compare_invoice(row, invoice, customer_is_ours=invoice.customer in customers)
            if drift is not None:
                drifts.append(drift)
            if invoice.customer not in customers:
                continue
            booked = ledger.get(row.id) if row is not None else None
            creators_invoice = (
                invoice.subscription is not None
                or (row is not None and row.subscription_id is not None)
                or any(line.price_id in catalog.plan_of_price for line in invoice.lines)
            )
            if not creators_invoice and booked is None:
                continue  # one-off invoices of the platform earn no creator anything
            earnings_checked += 1
            reversed_total = reversed_totals.get(row.id, 0) if row is not None else 0
            drift = compare_earnings(invoice, catalog, booked or {}, reversed_total, self._commission)
            if drift is not None:
                drifts.append(drift)
        return drifts, earnings_checked

    # --- orphans -----------------------------------------------------------------------------

    async def _stripe_subscriptions(self, run: ReconcileRun) -> None:
        starting_after = run.cursor.get("subscriptions")
        while starting_after != DONE:
            await self._limiter.wait()
            page = await self._stripe.list_subscriptions(starting_after=starting_after)
            async with unit_of_work(self._sessionmaker) as session:
                drifts = await self._compare_subscriptions(session, page.objects)
                if page.objects:
                    starting_after = page.objects[-1].id
                position = starting_after if page.has_more and page.objects else DONE
                await ReconcileRepository(session).mark_seen(
                    run.id, "subscription", [state.id for state in page.objects]
                )
                advance = await self._commit_page(
                    session, run, "subscriptions", position, {"orphans": len(page.objects)}, drifts
                )
            advance()
            starting_after = position
            self._progress("subscriptions", int(run.checked.get("orphans", 0)))

    async def _compare_subscriptions(
        self, session: AsyncSession, states: list[StripeSubscriptionState]
    ) -> list[Drift]:
        repository = ReconcileRepository(session)
        ours = await repository.subscriptions([state.id for state in states])
        drifts: list[Drift] = []
        for state in states:
            terminal = STRIPE_STATUS.get(state.status) in TERMINAL
            row = ours.get(state.id)
            if row is None:
                # The webhooks' own rule: a row still waiting for this Stripe subscription's id.
                waiting = await find_subscription(session, metadata=state.metadata)
                row = await repository.subscription(waiting.id) if waiting is not None else None
            if row is None:
                if not terminal:
                    currency, amount = state.currency, state.fixed_amount
                    drifts.append(
                        Drift(
                            "orphans", state.id,
                            f"Stripe subscription {state.id} is {state.status} with no row of ours",
                            currency, None, amount, amount,
                        )
                    )  # fmt: skip
                continue
            if terminal and row.status in LIVE_STATUSES:
                amount = row.monthly_amount or 0
                drifts.append(
                    Drift(
                        "orphans", state.id,
                        f"our {row.status} subscription {row.id} is {state.status} at Stripe",
                        row.currency, amount, 0, amount,
                    )
                )  # fmt: skip
        return drifts

    async def _our_subscriptions(self, run: ReconcileRun) -> None:
        """Our live rows whose Stripe subscription the (complete) listing never showed."""
        position = run.cursor.get("our_subscriptions")
        while position != DONE:
            after = uuid.UUID(position) if position else None
            async with unit_of_work(self._sessionmaker) as session:
                repository = ReconcileRepository(session)
                missing, last = await repository.live_rows_not_seen(
                    run.id, created_before=run.started_at, after=after, limit=OUR_ROWS_PAGE
                )
                counted = 0
                if last is not None:
                    counted = await repository.count_live_rows(
                        created_before=run.started_at, after=after, upto=last
                    )
                drifts = [
                    Drift(
                        "orphans", str(row.stripe_subscription_id),
                        f"our {row.status} subscription {row.id}: Stripe has no subscription "
                        f"{row.stripe_subscription_id}",
                        row.currency, row.monthly_amount or 0, None, row.monthly_amount or 0,
                    )
                    for row in missing
                ]  # fmt: skip
                position = str(last) if last is not None else DONE
                advance = await self._commit_page(
                    session, run, "our_subscriptions", position, {"orphans": counted}, drifts
                )
            advance()

    # --- usage -------------------------------------------------------------------------------

    async def _usage(self, run: ReconcileRun) -> None:
        position = run.cursor.get("usage")
        while position != DONE:
            after = uuid.UUID(position) if position else None
            async with self._sessionmaker() as session:
                repository = ReconcileRepository(session)
                batch = await repository.metered_subscriptions(after=after, limit=METERED_PAGE)
                periods = await repository.invoice_periods([s.id for s in batch])
            drifts: list[Drift] = []
            checked = 0
            for subscription in batch:
                for start, end in self._spans(subscription, periods.get(subscription.id, set()), run.since):
                    checked += 1
                    drift = await self._compare_usage(subscription, start, end)
                    if drift is not None:
                        drifts.append(drift)
            position = str(batch[-1].id) if len(batch) == METERED_PAGE else DONE
            async with unit_of_work(self._sessionmaker) as session:
                advance = await self._commit_page(session, run, "usage", position, {"usage": checked}, drifts)
            advance()
            self._progress("usage", int(run.checked.get("usage", 0)))

    @staticmethod
    def _spans(
        subscription: MeteredRow, invoiced: set[tuple[datetime, datetime]], since: datetime | None
    ) -> list[tuple[datetime, datetime]]:
        """The billing periods to compare, on minute boundaries: those its invoices billed and the
        current one up to now; only those ending after `since`."""
        periods = set(invoiced)
        if subscription.current_period_start is not None and subscription.current_period_end is not None:
            periods.add((subscription.current_period_start, subscription.current_period_end))
        now = clock.now()
        spans = set()
        for start, end in periods:
            first, last = minute_floor(start), minute_floor(min(end, now))
            if last > first and (since is None or end > since):
                spans.add((first, last))
        return sorted(spans)

    async def _compare_usage(self, subscription: MeteredRow, start: datetime, end: datetime) -> Drift | None:
        async with self._sessionmaker() as session:
            ours = await ReconcileRepository(session).metered_quantity(subscription.id, start, end)
        await self._limiter.wait()
        metered = await self._stripe.meter_usage(
            subscription.meter_id, customer=subscription.stripe_customer_id, start=start, end=end
        )
        if metered == ours:
            return None
        units = Decimal(ours) - metered
        stripe_units = int(metered) if metered == metered.to_integral_value() else None
        return Drift(
            "usage",
            f"{subscription.id}:{start:%Y-%m-%dT%H:%M}/{end:%Y-%m-%dT%H:%M}",
            f"subscription {subscription.id} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}: "
            f"{ours} calls recorded here, {metered} on the meter",
            subscription.currency,
            ours,
            stripe_units,
            usage_drift_cents(units, subscription.price_per_call, subscription.currency),
        )


class _AdvisoryLock:
    """Held for a whole run on its own connection: a second run is refused, not queued."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def __aenter__(self) -> None:
        self._connection = await self._engine.connect()
        locked = await self._connection.scalar(
            text("SELECT pg_try_advisory_lock(:id)"), {"id": RECONCILE_LOCK_ID}
        )
        if not locked:
            await self._connection.close()
            raise Conflict("Another reconcile is running", code="reconcile_running")

    async def __aexit__(self, *_exc: object) -> None:
        try:
            await self._connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": RECONCILE_LOCK_ID})
        finally:
            await self._connection.close()
