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

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import clock, metrics
from app.db.session import run_after_commit
from app.earnings.booking import book_invoice_earnings
from app.errors import Conflict
from app.invoices.stripe_sync import sync_invoice
from app.models import Consumer, Invoice, PaymentMethod, SyncRun
from app.outbox.service import Outbox
from app.payment_methods.repository import PaymentMethodRepository
from app.stripe import StripeGateway
from app.stripe.invoices import with_all_lines
from app.stripe.listing import Listable
from app.subscriptions.lifecycle import STRIPE_STATUS, TERMINAL, StripeSubscriptionState, apply_stripe_state
from app.sync.ratelimit import RateLimiter
from app.webhooks.handlers import find_subscription

log = logging.getLogger(__name__)
SYNC_LOCK_ID = 0x5_7121_0001  # pg advisory lock key of `billing sync`
MAX_DIFFERENCES = 1000
# A Stripe subscription younger than this may belong to a request still in flight (Stripe has
# answered, our commit has not happened yet): it is never taken for an orphan.
ORPHAN_GRACE_SECONDS = 3600
DONE = "done"
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


Applier = Callable[[AsyncSession, dict[str, Any], ListReport], Awaitable[None]]


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
    ) -> None:
        self._engine = engine
        self._sessionmaker = sessionmaker
        self._stripe = stripe
        self._redis = redis
        self._limiter = RateLimiter(rate_per_second)
        self._dry_run = dry_run
        self._repair_orphans = repair_orphans and not dry_run
        # When the page being applied was asked of Stripe: what its snapshots are as of.
        self._fetched_at = 0
        self._commission = commission
        self._progress = progress or (lambda _resource, _count: None)
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
            for resource, applier in self._appliers.items():
                await self._sync_list(run, resource, applier)
            run.status = "completed"
            run.finished_at = clock.now()
        except BaseException:
            run.status = "interrupted"
            raise
        finally:
            await self._save(run)
        return run

    async def _start_or_resume(self) -> SyncRun:
        async with self._sessionmaker() as session:
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
            await session.commit()
            return run

    async def _save(self, run: SyncRun) -> None:
        async with self._sessionmaker() as session:
            await session.merge(run)
            await session.commit()

    async def _sync_list(self, run: SyncRun, resource: Listable, applier: Applier) -> None:
        starting_after = run.cursor.get(resource)
        if starting_after == DONE:
            return
        report = ListReport.from_dict(run.report.get(resource))
        while True:
            await self._limiter.wait()
            self._fetched_at = clock.timestamp()
            page = await self._stripe.list_page(resource, starting_after=starting_after)
            async with self._sessionmaker() as session:
                for obj in page.objects:
                    report.seen += 1
                    await applier(session, obj, report)
                if self._dry_run:
                    await session.rollback()
                else:
                    await session.commit()
                    await run_after_commit(session)
            if page.objects:
                starting_after = page.objects[-1]["id"]
            run.cursor = {**run.cursor, resource: starting_after if page.has_more else DONE}
            run.report = {**run.report, resource: report.as_dict()}
            await self._save(run)
            self._progress(resource, report.seen)
            if not page.has_more or not page.objects:
                return

    async def _apply_customer(self, session: AsyncSession, obj: dict[str, Any], report: ListReport) -> None:
        consumer = (
            await session.execute(select(Consumer).where(Consumer.stripe_customer_id == obj["id"]))
        ).scalar_one_or_none()
        if consumer is None:
            report.unknown += 1
            report.note(f"customer {obj['id']}: no consumer here")
            return
        email = obj.get("email")
        if email and email != consumer.email:
            report.changed += 1
            report.note(f"customer {obj['id']}: email {consumer.email!r} -> {email!r}")
            consumer.email = email
        default = (obj.get("invoice_settings") or {}).get("default_payment_method")
        await self._sync_cards(session, consumer, default if isinstance(default, str) else None, report)

    async def _sync_cards(
        self, session: AsyncSession, consumer: Consumer, default: str | None, report: ListReport
    ) -> None:
        """Mirror the customer's cards: add what Stripe has, drop what was detached there, and
        follow Stripe's invoice default (left alone when Stripe has none)."""
        await self._limiter.wait()
        cards = {
            card.id: card for card in await self._stripe.list_customer_cards(str(consumer.stripe_customer_id))
        }
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
                repository.add(
                    PaymentMethod(
                        id=uuid.uuid4(), consumer_id=consumer.id, stripe_payment_method_id=card.id,
                        type=card.type, brand=card.brand, last4=card.last4, exp_month=card.exp_month,
                        exp_year=card.exp_year, is_default=False,
                    )
                )  # fmt: skip
            elif (row.brand, row.last4, row.exp_month, row.exp_year) != (
                card.brand, card.last4, card.exp_month, card.exp_year
            ):  # fmt: skip
                report.changed += 1
                report.note(f"{label}: card {stripe_id} details updated")
                row.brand, row.last4, row.exp_month, row.exp_year = (
                    card.brand, card.last4, card.exp_month, card.exp_year
                )  # fmt: skip
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
        self, session: AsyncSession, obj: dict[str, Any], report: ListReport
    ) -> None:
        state = StripeSubscriptionState.from_payload(obj)
        # The webhooks' own lookup: by Stripe id, or a row still waiting for its Stripe id.
        subscription = await find_subscription(
            session, stripe_subscription_id=state.id, metadata=state.metadata
        )
        if subscription is None:
            await self._orphan_or_unknown(session, state, int(obj.get("created") or 0), report)
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
        if self._fetched_at - created < ORPHAN_GRACE_SECONDS:
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
        await self._limiter.wait()
        await self._stripe.cancel_orphan_subscription(state.id, idempotency_key=f"orphan-cancel:{state.id}")
        report.changed += 1
        amounts = ", ".join(f"{amount} {currency}" for currency, amount in sorted(refunded.items()))
        report.note(f"subscription {state.id}: orphan cancelled, refunded {amounts or 'nothing'}")

    async def _refund_orphan(self, stripe_subscription_id: str) -> dict[str, int]:
        """Refund what is left unrefunded of every payment the orphan collected; per currency."""
        await self._limiter.wait()
        refunded: dict[str, int] = {}
        for charged in await self._stripe.subscription_payments(stripe_subscription_id):
            await self._limiter.wait()
            remaining = charged.amount - await self._stripe.refunded_amount(charged.payment_intent_id)
            if remaining <= 0:
                continue  # refunded by an earlier, interrupted repair
            await self._stripe.refund_payment(
                charged.payment_intent_id,
                amount=remaining,
                metadata={"orphan_subscription": stripe_subscription_id, "invoice": charged.invoice_id},
                idempotency_key=f"orphan-refund:{charged.payment_intent_id}:{remaining}",
            )
            refunded[charged.currency] = refunded.get(charged.currency, 0) + remaining
        return refunded

    async def _apply_invoice(self, session: AsyncSession, obj: dict[str, Any], report: ListReport) -> None:
        """The invoice webhooks' own mirror and booking, applied to what Stripe holds now."""
        before = (
            await session.execute(
                select(Invoice.status, Invoice.amount_due, Invoice.amount_paid, Invoice.total).where(
                    Invoice.stripe_invoice_id == obj["id"]
                )
            )
        ).one_or_none()
        invoice = await sync_invoice(
            session, await with_all_lines(self._stripe, obj), observed_at=clock.timestamp()
        )
        if invoice is None:
            report.unknown += 1
            report.note(f"invoice {obj['id']}: its customer is not ours")
            return
        booked = await book_invoice_earnings(session, invoice, self._commission)
        after = (invoice.status, invoice.amount_due, invoice.amount_paid, invoice.total)
        if before is None or tuple(before) != after or booked:
            report.changed += 1
            was = "missing" if before is None else before[0]
            report.note(f"invoice {obj['id']}: {was} -> {invoice.status}, {booked} earnings lines booked")
