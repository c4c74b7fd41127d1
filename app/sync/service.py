"""Reconciliation with Stripe: customers (with their cards), subscriptions and invoices.

Page through Stripe's objects, repair our mirror, report drift.

Each object type is applied by the same function the webhook handlers use (dj-stripe style),
so a resync and a webhook can never disagree. Progress is saved after every page, so an
interrupted run resumes where it stopped; a PostgreSQL advisory lock keeps runs single.

A live Stripe subscription of one of our customers with no row of ours is an orphan (e.g. a
subscribe whose commit failed after Stripe answered and that was never retried): it is reported,
and with `repair_orphans` what it charged is refunded and it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import clock, metrics
from app.config import DEFAULT_INVOICE_ISSUER
from app.db.runs import settling
from app.db.unit_of_work import unit_of_work
from app.earnings.booking import book_invoice_earnings
from app.errors import Conflict
from app.invoices.stripe_sync import sync_invoice
from app.models import Consumer, Invoice, Subscription, SyncRun
from app.models.subscription import STRIPE_STATUS, TERMINAL
from app.outbox.service import Outbox
from app.payment_methods.mirror import card_row, mirror_card
from app.payment_methods.repository import PaymentMethodRepository
from app.stripe import StripeGateway
from app.stripe.invoices import StripeInvoice
from app.stripe.listing import Listable, StripeListed, StripePage
from app.stripe.payment_methods import StripeCard
from app.stripe.shapes import StripeCustomerObject
from app.stripe.subscriptions import StripeSubscriptionState
from app.subscriptions.lifecycle import (
    apply_stripe_state,
    bills_calls_differently,
    follows_price_of,
)
from app.subscriptions.repository import find_subscription
from app.sync.ratelimit import RateLimiter
from app.usage.service import UsageService

log = logging.getLogger(__name__)
SYNC_LOCK_ID = 0x5_7121_0001  # pg advisory lock key of `billing sync`
MAX_DIFFERENCES = 1000
# A Stripe subscription younger than this may belong to a request still in flight (Stripe has
# answered, our commit has not happened yet): it is never taken for an orphan.
ORPHAN_GRACE_SECONDS = 3600
DONE = "done"
# Card lists asked of Stripe at once for a page of customers (each still waits for its slot).
CARD_CALLS_IN_FLIGHT = 8
Progress = Callable[[str, int], None]


@dataclass
class ListReport:
    seen: int = 0
    changed: int = 0
    unknown: int = 0
    differences: list[str] = field(default_factory=list)
    # Subscriptions only: Stripe subscriptions with no row of ours, and rows billed at a price no
    # plan of their API has.
    orphans: int = 0
    flagged: int = 0

    def note(self, difference: str) -> None:
        if len(self.differences) < MAX_DIFFERENCES:
            self.differences.append(difference)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "changed": self.changed,
            "unknown": self.unknown,
            "differences": self.differences,
            "orphans": self.orphans,
            "flagged": self.flagged,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ListReport:
        data = data or {}
        return cls(
            data.get("seen", 0),
            data.get("changed", 0),
            data.get("unknown", 0),
            list(data.get("differences", [])),
            data.get("orphans", 0),
            data.get("flagged", 0),
        )


# A page, when it was asked for, and (customers) the cards of those that are ours.
_Fetched = tuple[StripePage[StripeListed], int, dict[str, dict[str, StripeCard]]]
# Each list's applier takes that list's shape (`app.stripe.listing.PARSERS`).
Applier = Callable[[AsyncSession, Any, ListReport], Awaitable[None]]


class SyncService:
    def __init__(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        stripe: StripeGateway,
        redis: ArqRedis | None,
        *,
        rate_per_second: float,
        commission: Decimal,
        dry_run: bool,
        progress: Progress | None = None,
        repair_orphans: bool = False,
        invoice_issuer: str = DEFAULT_INVOICE_ISSUER,
        usage: UsageService | None = None,
    ) -> None:
        self._engine = engine
        self._usage = usage
        self._sessionmaker = sessionmaker
        self._stripe = stripe
        self._redis = redis
        self._limiter = RateLimiter(rate_per_second)
        self._dry_run = dry_run
        self._repair_orphans = repair_orphans and not dry_run
        # When the page being applied was asked of Stripe: what its snapshots are as of.
        self._fetched_at = 0
        self._commission = commission
        self._invoice_issuer = invoice_issuer
        self._progress = progress or (lambda _resource, _count: None)
        # The cards of the customers page being applied, asked for with the page.
        self._cards: dict[str, dict[str, StripeCard]] = {}
        self._appliers: dict[Listable, Applier] = {
            "customers": self._apply_customer,
            "subscriptions": self._apply_subscription,
            "invoices": self._apply_invoice,
        }

    async def run(self) -> SyncRun:
        """Reconcile every list, resuming an interrupted run of the same kind; returns the run."""
        async with self._engine.connect() as lock_connection:
            locked = await lock_connection.scalar(
                text("SELECT pg_try_advisory_lock(:id)"), {"id": SYNC_LOCK_ID}
            )
            if not locked:
                raise Conflict("Another sync is running", code="sync_running")
            try:
                return await self._run_locked()
            finally:
                await lock_connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": SYNC_LOCK_ID})

    async def _run_locked(self) -> SyncRun:
        run = await self._start_or_resume()
        try:
            with settling(run):
                for resource, applier in self._appliers.items():
                    await self._sync_list(run, resource, applier)
        finally:
            await self._save(run)
        return run

    async def _start_or_resume(self) -> SyncRun:
        async with unit_of_work(self._sessionmaker) as session:
            statement = (
                select(SyncRun)
                .where(SyncRun.status.in_(("running", "interrupted")), SyncRun.dry_run == self._dry_run)
                .order_by(SyncRun.started_at.desc())
                .limit(1)
            )
            run = (await session.execute(statement)).scalar_one_or_none()
            if run is None:
                run = SyncRun(id=uuid.uuid4(), status="running", dry_run=self._dry_run, cursor={}, report={})
                session.add(run)
            run.status = "running"
            return run

    async def _save(self, run: SyncRun) -> None:
        async with unit_of_work(self._sessionmaker) as session:
            await session.merge(run)

    async def _sync_list(self, run: SyncRun, resource: Listable, applier: Applier) -> None:
        """Page through one list. While a page is applied the next one is already asked for (its
        cursor is the page's last id), with its customers' cards, several at once, each call in
        its slot: the time spent in our database overlaps Stripe's, so a run keeps to the
        configured pace instead of falling behind it."""
        starting_after = run.cursor.get(resource)
        if starting_after == DONE:
            return
        report = ListReport.from_dict(run.report.get(resource))
        ahead: asyncio.Task[_Fetched] | None = asyncio.create_task(self._fetch_page(resource, starting_after))
        try:
            while ahead is not None:
                page, self._fetched_at, self._cards = await ahead
                more = page.has_more and bool(page.objects)
                ahead = asyncio.create_task(self._fetch_page(resource, page.objects[-1].id)) if more else None
                async with unit_of_work(self._sessionmaker, dry_run=self._dry_run) as session:
                    for obj in page.objects:
                        report.seen += 1
                        await applier(session, obj, report)
                if page.objects:
                    starting_after = page.objects[-1].id
                run.cursor = {**run.cursor, resource: starting_after if more else DONE}
                run.report = {**run.report, resource: report.as_dict()}
                await self._save(run)
                self._progress(resource, report.seen)
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    async def _fetch_page(self, resource: Listable, starting_after: str | None) -> _Fetched:
        """A page of the list, when Stripe answered it (what its snapshots are as of), and for
        customers their cards too: all of it asked for while the previous page is applied."""
        page = await self._limiter.call(
            lambda: self._stripe.list_page(resource, starting_after=starting_after)
        )
        fetched_at = page.answered_at or 0  # by Stripe's clock; a list is never a replay
        cards = (
            await self._customer_cards([obj.id for obj in page.objects]) if resource == "customers" else {}
        )
        return page, fetched_at, cards

    async def _customer_cards(self, ids: list[str]) -> dict[str, dict[str, StripeCard]]:
        """The cards of the page's customers that are ours, asked for concurrently (each call in its
        slot of the pace, at most CARD_CALLS_IN_FLIGHT at once). Customers not ours are not asked."""
        async with self._sessionmaker() as session:
            ours = (
                await session.execute(
                    select(Consumer.stripe_customer_id).where(Consumer.stripe_customer_id.in_(ids))
                )
            ).scalars()
            known = [customer for customer in ours if customer is not None]
        slots = asyncio.Semaphore(CARD_CALLS_IN_FLIGHT)

        async def cards_of(customer: str) -> tuple[str, dict[str, StripeCard]]:
            async with slots:
                cards = await self._limiter.call(lambda: self._stripe.list_customer_cards(customer))
            return customer, {card.id: card for card in cards}

        return dict(await asyncio.gather(*(cards_of(customer) for customer in known)))

    async def _apply_customer(
        self, session: AsyncSession, customer: StripeCustomerObject, report: ListReport
    ) -> None:
        consumer = (
            await session.execute(select(Consumer).where(Consumer.stripe_customer_id == customer.id))
        ).scalar_one_or_none()
        if consumer is None:
            report.unknown += 1
            report.note(f"customer {customer.id}: no consumer here")
            return
        email = customer.email
        if email and email != consumer.email:
            report.changed += 1
            report.note(f"customer {customer.id}: email {consumer.email!r} -> {email!r}")
            consumer.email = email
        await self._sync_cards(session, consumer, customer.default_payment_method, report)

    async def _sync_cards(
        self, session: AsyncSession, consumer: Consumer, default: str | None, report: ListReport
    ) -> None:
        """Mirror the customer's cards: add what Stripe has, drop what was detached there, and
        follow Stripe's invoice default (left alone when Stripe has none)."""
        cards = self._cards.get(str(consumer.stripe_customer_id))
        if cards is None:  # not asked with its page (a consumer added meanwhile)
            listed = await self._limiter.call(
                lambda: self._stripe.list_customer_cards(str(consumer.stripe_customer_id))
            )
            cards = {card.id: card for card in listed}
        repository = PaymentMethodRepository(session)
        mirrored = {
            pm.stripe_payment_method_id: pm for pm in await repository.list_for(consumer.id, for_update=True)
        }
        label = f"customer {consumer.stripe_customer_id}"
        for stripe_id, stale in mirrored.items():
            if stripe_id not in cards:
                report.changed += 1
                report.note(f"{label}: card {stripe_id} detached at Stripe, removed")
                await repository.delete(stale)
        for stripe_id, card in cards.items():
            row = mirrored.get(stripe_id)
            if row is None:
                report.changed += 1
                report.note(f"{label}: card {stripe_id} missing here, added")
                repository.add(card_row(consumer.id, card, is_default=False))
            elif mirror_card(row, card):
                report.changed += 1
                report.note(f"{label}: card {stripe_id} details updated")
        await repository.flush()
        if default is None or default not in cards:
            return
        rows = await repository.list_for(consumer.id)
        current = next((row for row in rows if row.is_default), None)
        if current is not None and current.stripe_payment_method_id == default:
            return
        report.changed += 1
        report.note(f"{label}: default card -> {default}")
        if current is not None:
            current.is_default = False
            await repository.flush()  # one default per consumer, enforced by a unique index
        for row in rows:
            if row.stripe_payment_method_id == default:
                row.is_default = True
        await repository.flush()

    async def _apply_subscription(
        self, session: AsyncSession, state: StripeSubscriptionState, report: ListReport
    ) -> None:
        # The webhooks' own lookup: by Stripe id, or a row still waiting for its Stripe id.
        subscription = await find_subscription(
            session, stripe_subscription_id=state.id, metadata=state.metadata
        )
        if subscription is None:
            await self._orphan_or_unknown(session, state, state.created or 0, report)
            return
        if not await self._usage_counted_before_plan_change(subscription, state):
            report.note(
                f"subscription {state.id}: its plan changed at Stripe; left as it is until the usage "
                "before the change can be counted"
            )
            return
        before = (subscription.status, subscription.pricing_plan_id, subscription.plan_version)
        flagged_before = subscription.unmatched_stripe_price_id
        # As of when Stripe was asked: a webhook applied since then is newer than this snapshot.
        changed = await apply_stripe_state(
            Outbox(session, self._redis), subscription, state, observed_at=self._fetched_at
        )
        if subscription.unmatched_stripe_price_id is not None:
            report.flagged += 1
            if subscription.unmatched_stripe_price_id != flagged_before:
                report.note(
                    f"subscription {state.id}: Stripe bills price {state.price_id}, which no plan of "
                    f"API {subscription.api_id} has (flagged; plan kept)"
                )
        if changed:
            report.changed += 1
            plan = ""
            if before[1:] != (subscription.pricing_plan_id, subscription.plan_version):
                plan = (
                    f", plan {before[1]} v{before[2]} -> {subscription.pricing_plan_id} "
                    f"v{subscription.plan_version} (the price Stripe bills)"
                )
            report.note(
                f"subscription {state.id}: {before[0]} -> {subscription.status}{plan} "
                "(periods and flags mirrored)"
            )

    async def _usage_counted_before_plan_change(
        self, subscription: Subscription, state: StripeSubscriptionState
    ) -> bool:
        """As the webhook does: before the row follows a price that bills calls otherwise (pay per
        use or not), the calls until then are recorded under the plan they were made on. False
        while they cannot be counted yet (metering or Stripe down)."""
        if self._usage is None or self._dry_run:
            return True
        if not follows_price_of(subscription, state, observed_at=self._fetched_at):
            return True
        if not await bills_calls_differently(subscription, state.price_id):
            return True
        return await self._usage.flush(subscription.id, datetime.fromtimestamp(self._fetched_at, tz=UTC))

    async def _orphan_or_unknown(
        self, session: AsyncSession, state: StripeSubscriptionState, created: int, report: ListReport
    ) -> None:
        """A Stripe subscription we have no row of: an orphan when it is live and its customer is
        ours (reported, and with `repair_orphans` refunded and cancelled), else not ours."""
        ours = (
            state.customer is not None
            and (
                await session.execute(
                    select(Consumer.id).where(Consumer.stripe_customer_id == state.customer)
                )
            ).first()
            is not None
        )
        if not ours or STRIPE_STATUS.get(state.status) in TERMINAL:
            report.unknown += 1
            report.note(f"subscription {state.id}: not in our store")
            return
        # Business time, not a snapshot's order: how long ago our subscribe may still be in flight.
        if clock.timestamp() - created < ORPHAN_GRACE_SECONDS:
            report.unknown += 1
            report.note(f"subscription {state.id}: no row of ours yet (created within the hour); left alone")
            return
        report.orphans += 1
        metrics.ORPHAN_SUBSCRIPTIONS.inc()
        log.warning(
            "Stripe subscription with no row of ours",
            extra={"stripe_subscription_id": state.id, "stripe_customer_id": state.customer},
        )
        if not self._repair_orphans:
            report.note(
                f"subscription {state.id}: orphan ({state.status}, customer {state.customer}, no row of "
                "ours); run with --repair to refund and cancel it"
            )
            return
        refunded = await self._refund_orphan(state.id)
        await self._limiter.call(
            lambda: self._stripe.cancel_orphan_subscription(
                state.id, idempotency_key=f"orphan-cancel:{state.id}"
            )
        )
        report.changed += 1
        amounts = ", ".join(f"{amount} {currency}" for currency, amount in sorted(refunded.items()))
        report.note(f"subscription {state.id}: orphan cancelled, refunded {amounts or 'nothing'}")

    async def _refund_orphan(self, stripe_subscription_id: str) -> dict[str, int]:
        """Refund what is left unrefunded of every payment the orphan collected; per currency."""
        refunded: dict[str, int] = {}
        payments = await self._limiter.call(
            lambda: self._stripe.subscription_payments(stripe_subscription_id)
        )
        for charged in payments:
            already = await self._limiter.call(
                partial(self._stripe.refunded_amount, charged.payment_intent_id)
            )
            remaining = charged.amount - already
            if remaining <= 0:
                continue  # refunded by an earlier, interrupted repair
            await self._limiter.call(
                partial(
                    self._stripe.refund_payment,
                    charged.payment_intent_id,
                    amount=remaining,
                    metadata={"orphan_subscription": stripe_subscription_id, "invoice": charged.invoice_id},
                    idempotency_key=f"orphan-refund:{charged.payment_intent_id}:{remaining}",
                )
            )
            refunded[charged.currency] = refunded.get(charged.currency, 0) + remaining
        return refunded

    async def _apply_invoice(self, session: AsyncSession, listed: StripeInvoice, report: ListReport) -> None:
        """The invoice webhooks' own mirror and booking, applied to what Stripe holds now."""
        before = (
            await session.execute(
                select(Invoice.status, Invoice.amount_due, Invoice.amount_paid, Invoice.total).where(
                    Invoice.stripe_invoice_id == listed.id
                )
            )
        ).one_or_none()
        complete = await self._limiter.call(lambda: self._stripe.with_all_lines(listed))
        invoice = await sync_invoice(
            session, complete, observed_at=self._fetched_at, issuer=self._invoice_issuer
        )
        if invoice is None:
            report.unknown += 1
            report.note(f"invoice {listed.id}: its customer is not ours")
            return
        booked = await book_invoice_earnings(session, invoice, self._commission)
        after = (invoice.status, invoice.amount_due, invoice.amount_paid, invoice.total)
        if before is None or tuple(before) != after or booked:
            report.changed += 1
            was = "missing" if before is None else before[0]
            report.note(f"invoice {listed.id}: {was} -> {invoice.status}, {booked} earnings lines booked")
