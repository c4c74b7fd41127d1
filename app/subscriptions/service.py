from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP
from typing import Any, NamedTuple

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth import Principal
from app.consumers.service import ConsumerService, consumer_id_for
from app.db import driver_connection
from app.entitlements.overage import bill_overage_before_change, overage_terms
from app.entitlements.snapshot import overage_amount
from app.errors import Conflict, InvalidField, NotFound, PaymentRequired, ServiceUnavailable
from app.events.types import SUBSCRIPTION_CHANGED
from app.integrations.metering import MeteringClient, MeteringUnavailable
from app.models import Consumer, PricingPlan, PricingPlanVersion, Subscription
from app.models.subscription import TERMINAL, ApiKeyStatus, api_key_status_of
from app.money import exponent
from app.outbox.service import Outbox
from app.pagination import decode_cursor, encode_cursor
from app.payment_methods.service import PaymentMethodService
from app.periods import add_months, usage_period
from app.plans.repository import PlanRepository
from app.plans.schemas import plan_out
from app.stripe import StripeGateway
from app.stripe.subscriptions import StripeSubscription
from app.subscriptions.documents import dumps, subscription_document
from app.subscriptions.lifecycle import apply_status, apply_stripe_state
from app.subscriptions.repository import SubscriptionRepository, fetch_page
from app.subscriptions.schemas import (
    PreviewLine,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionOut,
    UpgradePreview,
    UsageOut,
)
from app.usage.windows import period_days

# Statuses in which a subscription may change plan or be cancelled at its period's end.
RUNNING = frozenset({"active", "trial", "past_due"})
# How old an upgrade preview's `proration_date` may be when the upgrade sends it back, and how far
# ahead of our clock it may be (another replica's clock may run a little ahead).
PRORATION_DATE_MAX_AGE = timedelta(minutes=10)
PRORATION_DATE_MAX_SKEW = timedelta(seconds=5)
SUBSCRIPTION_IDS = uuid.UUID("5b1e3c0a-8f4d-4b7e-9a61-2f0c7d9e4a10")  # uuid5 namespace of new rows


class PageKey(NamedTuple):
    """The (created_at, id) of a page's last row, which the next page's cursor carries."""

    created_at: datetime
    id: uuid.UUID


def subscription_id_for(
    consumer_id: uuid.UUID, api_id: str, plan_id: uuid.UUID, version: int, earlier: int
) -> uuid.UUID:
    """The id of a new subscription, derived from the request rather than drawn at random.

    `earlier` counts the consumer's earlier subscriptions to the API, so subscribing again after
    a cancellation is a new row, while a subscribe retried after a failure between Stripe's answer
    and our commit (nothing committed: the count is unchanged) gets the same id, hence the same
    Stripe idempotency key (`sub-create:<id>`), the same metadata, and Stripe's first answer back
    instead of a second subscription.
    """
    return uuid.uuid5(SUBSCRIPTION_IDS, f"{consumer_id}:{api_id}:{plan_id}:{version}:{earlier}")


def request_key_digest(consumer_id: uuid.UUID, key: str) -> str:
    """What a subscription keeps of the Idempotency-Key that made it: a digest, scoped to its consumer."""
    return hashlib.sha256(f"{consumer_id}:{key}".encode()).hexdigest()


# Records a subscription's usage windows up to an instant and sends them to Stripe; True when
# all of it is in (UsageService.flush: it commits on its own, before our change is made).
UsageFlush = Callable[[uuid.UUID, datetime], Awaitable[bool]]


def api_key_status(subscription: Subscription) -> ApiKeyStatus:
    """Where the subscription's API key stands (the one rule: `api_key_status_of`)."""
    return api_key_status_of(
        subscription.api_key_id, subscription.status, suspended=subscription.api_key_suspended
    )


def _holds(subscription: Subscription, plan: PricingPlan, version: PricingPlanVersion) -> bool:
    """The subscription is on this plan version already: a change to it changes nothing."""
    return (plan.id, version.version) == (subscription.pricing_plan_id, subscription.plan_version)


def subscription_out(
    subscription: Subscription,
    plan: PricingPlan,
    version: PricingPlanVersion,
    *,
    client_secret: str | None = None,
) -> SubscriptionOut:
    """The contract's Subscription, embedding the plan version the subscriber holds."""
    return SubscriptionOut(
        id=subscription.id,
        consumer_id=subscription.consumer_id,
        api_id=subscription.api_id,
        pricing_plan_id=subscription.pricing_plan_id,
        pricing_plan=plan_out(plan, version),
        api_key_id=subscription.api_key_id,
        api_key_status=api_key_status(subscription),
        stripe_subscription_id=subscription.stripe_subscription_id,
        status=subscription.status,
        started_at=subscription.started_at,
        cancelled_at=subscription.cancelled_at,
        expires_at=subscription.expires_at,
        current_period_start=subscription.current_period_start,
        current_period_end=subscription.current_period_end,
        trial_end=subscription.trial_end,
        cancel_at_period_end=subscription.cancel_at_period_end,
        client_secret=client_secret,
        checkout_url=subscription.checkout_url if subscription.status == "incomplete" else None,
    )


async def subscription_page(
    connection: Any, principal: Principal, *, status: str | None, cursor: str | None, limit: int
) -> bytes:
    """`SubscriptionService.list` on any asyncpg connection: the list's lean route reads it on a
    pooled read connection, without a session or the service's collaborators."""
    after = decode_cursor(cursor) if cursor else None
    # The consumer id derives from the user id: no lookup; an unregistered user has no rows.
    rows = await fetch_page(
        connection, consumer_id_for(principal.user_id), status=status, after=after, limit=limit + 1
    )
    page = rows[:limit]
    next_cursor = (
        encode_cursor(PageKey(page[-1]["created_at"], page[-1]["id"])) if len(rows) > limit else None
    )
    document = {"subscriptions": [subscription_document(row) for row in page], "next_cursor": next_cursor}
    return dumps(document, SubscriptionList)


class SubscriptionService:
    def __init__(
        self,
        session: AsyncSession,
        stripe: StripeGateway,
        outbox: Outbox,
        metering: MeteringClient,
        *,
        consumers: ConsumerService,
        cards: PaymentMethodService,
        automatic_tax: bool = False,
        flush_usage: UsageFlush | None = None,
    ) -> None:
        self._session = session
        self._flush_usage = flush_usage
        self._automatic_tax = automatic_tax  # STRIPE_TAX_ENABLED: Stripe Tax on new subscriptions
        self._repo = SubscriptionRepository(session)
        self._plans = PlanRepository(session)
        self._consumers = consumers
        self._cards = cards
        self._stripe = stripe
        self._outbox = outbox
        self._metering = metering

    async def create(
        self, principal: Principal, data: SubscriptionCreate, *, request_key: str | None = None
    ) -> SubscriptionOut:
        """Subscribe the caller to a plan: free plans start at once; paid ones through Stripe with a
        stored (or just attached) card, or through a Stripe Checkout page with `checkout`.

        A second live subscription to the API is 409, except for the retry of the very subscribe
        that made the live one (same Idempotency-Key): its commit went through but its answer was
        lost, so it answers the subscription it made, as the first attempt would have."""
        consumer = await self._consumers.require_own(principal)
        plan, version = await self._sellable_plan(data.pricing_plan_id, api_id=data.api_id)
        if data.checkout:
            if plan.type == "free":
                raise InvalidField("checkout", "a free plan needs no checkout")
            for field in ("success_url", "cancel_url"):
                if getattr(data, field) is None:
                    raise InvalidField(field, "required with checkout")
        digest = request_key_digest(consumer.id, request_key) if request_key is not None else None
        live = await self._repo.live_on_api(consumer.id, data.api_id)
        if live is not None:
            if digest is not None and live.request_key_digest == digest and live.pricing_plan_id == plan.id:
                return await self._replayed(live)
            raise Conflict("You already have a live subscription to this API", code="already_subscribed")
        earlier = await self._repo.count_on_api(consumer.id, plan.api_id)
        subscription = Subscription(
            id=subscription_id_for(consumer.id, plan.api_id, plan.id, version.version, earlier),
            consumer_id=consumer.id,
            api_id=plan.api_id,
            pricing_plan_id=plan.id,
            plan_version=version.version,
            status="incomplete",
            started_at=clock.now(),
            cancel_at_period_end=False,
            request_key_digest=digest,
        )
        await self._insert(subscription)
        client_secret: str | None = None
        if plan.type == "free":
            self._start_free_period(subscription)
            await apply_status(self._outbox, subscription, "active")
        elif data.checkout:
            session = await self._stripe.create_checkout_session(
                customer=self._customer(consumer),
                price_id=self._price(version),
                success_url=str(data.success_url),
                cancel_url=str(data.cancel_url),
                trial_period_days=plan.trial_period_days,
                client_reference_id=str(subscription.id),
                metadata=self._metadata(subscription),
                idempotency_key=f"checkout-create:{subscription.id}",
                automatic_tax=self._automatic_tax,
                overage_price_id=version.stripe_overage_price_id,
            )
            subscription.stripe_checkout_session_id = session.id
            subscription.checkout_url = session.url
        else:
            card = await self._card_for(consumer, data.payment_method_id)
            created = await self._stripe.create_subscription(
                customer=self._customer(consumer),
                price_id=self._price(version),
                payment_method=card,
                trial_period_days=plan.trial_period_days,
                metadata=self._metadata(subscription),
                idempotency_key=f"sub-create:{subscription.id}",
                automatic_tax=self._automatic_tax,
                overage_price_id=version.stripe_overage_price_id,
            )
            client_secret = await self._apply_created(subscription, created)
        await self._repo.flush()
        return subscription_out(subscription, plan, version, client_secret=client_secret)

    async def list(
        self, principal: Principal, *, status: str | None, cursor: str | None, limit: int
    ) -> bytes:
        """The caller's subscriptions, newest first, a page at a time: the contract's
        SubscriptionList as JSON (the lean path of `app.subscriptions.documents`)."""
        connection = await driver_connection(self._session)
        return await subscription_page(connection, principal, status=status, cursor=cursor, limit=limit)

    async def get(self, principal: Principal, subscription_id: uuid.UUID) -> bytes:
        """The caller's subscription as the contract's Subscription JSON; anybody else's is a 404."""
        row = await self._repo.owned_row(subscription_id, consumer_id_for(principal.user_id))
        if row is None:
            raise NotFound("Subscription not found")
        return dumps(subscription_document(row), SubscriptionOut)

    async def cancel(
        self, principal: Principal, subscription_id: uuid.UUID, *, immediately: bool
    ) -> SubscriptionOut:
        """Cancel at the end of the paid period (default) or at once; cancelling again changes
        nothing. Free, unpaid and checkout-pending subscriptions have no paid period and end at once.
        Ending revokes the API key."""
        subscription = await self._owned(principal, subscription_id, for_update=True)
        if subscription.status in TERMINAL:
            return await self._out(subscription)
        stripe_id = subscription.stripe_subscription_id
        if stripe_id and not immediately and subscription.status in RUNNING:
            if not subscription.cancel_at_period_end:
                updated = await self._stripe.cancel_subscription_at_period_end(
                    stripe_id, idempotency_key=f"sub-cancel-at-period-end:{subscription.id}"
                )
                await self._mirror(subscription, updated)
        elif stripe_id:
            plan, _version = await self._held(subscription)
            # The calls until now go on the final invoice made at once (invoice_now); if they
            # cannot be sent now, the final invoice's draft webhook sends them before it closes.
            if plan.type == "pay_per_use" or subscription.stripe_overage_item_id is not None:
                await self._usage_until_now(subscription)
            canceled = await self._stripe.cancel_subscription(
                stripe_id,
                prorate=plan.type == "subscription" and subscription.status == "active",
                invoice_now=True,
                idempotency_key=f"sub-cancel:{subscription.id}",
            )
            await self._mirror(subscription, canceled)
        else:
            if subscription.stripe_checkout_session_id and subscription.status == "incomplete":
                await self._stripe.expire_checkout_session(
                    subscription.stripe_checkout_session_id,
                    idempotency_key=f"checkout-expire:{subscription.id}",
                )
            subscription.expires_at = clock.now()
            subscription.cancel_at_period_end = False
            await apply_status(self._outbox, subscription, "cancelled")
        return await self._out(subscription)

    async def upgrade(
        self,
        principal: Principal,
        subscription_id: uuid.UUID,
        new_plan_id: uuid.UUID,
        proration_date: datetime | None = None,
    ) -> SubscriptionOut:
        """Move to another plan of the same API with Stripe proration; free <-> paid included.

        `proration_date`, the one the preview returned, makes Stripe prorate as of that moment, so
        the amount charged is the amount the preview showed; without it, as of now. When the
        change's payment fails, Stripe keeps the old plan and so do we: 402 with Stripe's reason.
        A subscription already on the plan answers as it is (a PUT states the plan to be on): a
        retry of a change whose answer was lost finds it made, by its webhook, and charges nothing.
        """
        prorate_at = self._proration_timestamp(proration_date)
        subscription = await self._owned(principal, subscription_id, for_update=True)
        plan, version = await self._change_target(subscription, new_plan_id)
        if _holds(subscription, plan, version):
            return await self._out(subscription)
        consumer = await self._consumers.require_own(principal)
        old_plan, old_version = await self._held(subscription)
        # Calls until now are billed by the plan they were made on: per call on pay-per-use, and
        # through the overage item (added, swapped or removed now) on an overage plan.
        by_meter = "pay_per_use" in (old_plan.type, plan.type) or (
            subscription.stripe_overage_item_id is not None or version.stripe_overage_price_id is not None
        )
        # Without the item (a subscription made before it), by an invoice item made before the change.
        by_line = (
            subscription.stripe_overage_item_id is None and old_version.overage_price_per_call is not None
        )
        if (by_meter or by_line) and not await self._usage_until_now(subscription):
            raise ServiceUnavailable(
                "Usage until now could not be counted, try the change again shortly", code="usage_not_counted"
            )
        # Unique per change: the row's last update, so a retry of this change reuses the key.
        tag = f"{subscription.id}:{int(subscription.updated_at.timestamp() * 1_000_000)}"
        client_secret: str | None = None
        stripe_id = subscription.stripe_subscription_id
        if plan.type == "free":
            if stripe_id:
                # The overage so far goes on the final invoice the cancel makes (invoice_now).
                await bill_overage_before_change(
                    self._session, self._stripe, subscription, self._customer(consumer), change=tag
                )
                await self._stripe.cancel_subscription(
                    stripe_id, prorate=True, invoice_now=True, idempotency_key=f"sub-downgrade:{tag}"
                )
                self._detach_stripe(subscription)
            self._start_free_period(subscription)
            await apply_status(self._outbox, subscription, "active")
        elif stripe_id is None:
            card = await self._card_for(consumer, None)
            created = await self._stripe.create_subscription(
                customer=self._customer(consumer),
                price_id=self._price(version),
                payment_method=card,
                trial_period_days=None,
                metadata=self._metadata(subscription, plan, version),
                idempotency_key=f"sub-create:{tag}",
                automatic_tax=self._automatic_tax,
                overage_price_id=version.stripe_overage_price_id,
            )
            subscription.stripe_state_at = None
            client_secret = await self._apply_created(subscription, created)
        else:
            if subscription.stripe_subscription_item_id is None:
                raise Conflict("The Stripe subscription is not mirrored yet, try again", code="not_synced")
            price_id = self._price(version)
            await bill_overage_before_change(
                self._session, self._stripe, subscription, self._customer(consumer), change=tag
            )
            updated = await self._stripe.change_subscription_price(
                stripe_id,
                item_id=subscription.stripe_subscription_item_id,
                price_id=price_id,
                proration_date=prorate_at,
                # One change to one price as of one moment: a retry of it gets Stripe's first answer.
                idempotency_key=f"sub-change:{subscription.id}:{price_id}:{prorate_at}",
                overage_item_id=subscription.stripe_overage_item_id,
                overage_price_id=version.stripe_overage_price_id,
            )
            if updated.change_pending:
                # Nothing is written: the rollback keeps the row on the plan Stripe still bills.
                reason = updated.payment_error or "The payment for the new plan did not go through."
                raise PaymentRequired(
                    f"{reason} The plan was not changed; the subscription stays on its current plan.",
                    code="plan_change_payment_failed",
                )
            await self._mirror(subscription, updated)
            # Stripe's answer to this change says which overage item the new plan has (if any).
            subscription.stripe_overage_item_id = updated.state.overage_item_id
        subscription.pricing_plan_id = plan.id
        subscription.plan_version = version.version
        self._outbox.refresh_entitlement(subscription)
        await self._outbox.publish_event(subscription, SUBSCRIPTION_CHANGED, f"{subscription.id}:{tag}")
        await self._repo.flush()
        return subscription_out(subscription, plan, version, client_secret=client_secret)

    async def preview_upgrade(
        self, principal: Principal, subscription_id: uuid.UUID, new_plan_id: uuid.UUID
    ) -> UpgradePreview:
        """What moving to `new_plan_id` would invoice now, prorated, before anything changes."""
        subscription = await self._owned(principal, subscription_id)
        plan, version = await self._change_target(subscription, new_plan_id)
        if _holds(subscription, plan, version):
            raise Conflict("The subscription is already on this plan", code="same_plan")
        if plan.type == "free":
            # Leaving a paid plan cancels it at Stripe; unused time becomes a credit, nothing is due.
            return UpgradePreview(amount_due=0, currency=version.currency, lines=[])
        consumer = await self._consumers.require_own(principal)
        stripe_id = subscription.stripe_subscription_id
        # The upgrade sends this moment back, so Stripe prorates the change exactly as shown here.
        proration_date = clock.timestamp() if stripe_id else None
        preview = await self._stripe.preview_invoice(
            customer=self._customer(consumer),
            price_id=self._price(version),
            subscription_id=stripe_id,
            item_id=subscription.stripe_subscription_item_id if stripe_id else None,
            proration_date=proration_date,
            automatic_tax=self._automatic_tax,
            overage_item_id=subscription.stripe_overage_item_id if stripe_id else None,
            overage_price_id=version.stripe_overage_price_id,
        )

        def moment(value: int | None) -> datetime | None:
            return datetime.fromtimestamp(value, tz=UTC) if value else None

        return UpgradePreview(
            amount_due=preview.amount_due,
            currency=preview.currency or version.currency,
            proration_date=moment(proration_date),
            lines=[
                PreviewLine(
                    description=line.description,
                    amount=line.amount,
                    currency=line.currency or version.currency,
                    proration=line.proration,
                    period_start=line.period_start,
                    period_end=line.period_end,
                )
                for line in preview.lines
            ]
            + overage_terms(version),
        )

    async def usage(self, principal: Principal, subscription_id: uuid.UUID) -> UsageOut:
        """Calls in the current period against the plan's limit: our usage records, raised to the
        metering service's live count when it answers (`live` says whether it did)."""
        subscription = await self._owned(principal, subscription_id)
        plan, version = await self._held(subscription)
        now = clock.now()
        start, end = usage_period(
            subscription.current_period_start, subscription.current_period_end, subscription.started_at, now
        )
        # Recorded windows bill their successful calls (`quantity`); failed ones are kept beside.
        _billed, successful, failed = await self._repo.recorded_usage(subscription.id, start, end)
        total = successful + failed
        live = True
        first_day, last_day = period_days(start, end)
        try:
            measured = await self._metering.subscription_usage(subscription.id, first_day, last_day)
        except MeteringUnavailable:
            live = False
        else:
            if measured.total_calls >= total:
                total, successful, failed = (
                    measured.total_calls, measured.successful_calls, measured.failed_calls
                )  # fmt: skip
        limit = version.call_limit
        # The limit and the price count successful calls, as the usage worker reports them to Stripe.
        return UsageOut(
            subscription_id=subscription.id,
            period_start=start,
            period_end=end,
            total_calls=total,
            successful_calls=successful,
            failed_calls=failed,
            call_limit=limit,
            remaining_calls=max(limit - successful, 0) if limit is not None else None,
            estimated_amount=self._estimate(plan, version, successful),
            currency=version.currency,
            live=live,
            over_limit=limit is not None and successful > limit,
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _usage_until_now(self, subscription: Subscription) -> bool:
        if self._flush_usage is None:
            return True
        return await self._flush_usage(subscription.id, clock.now())

    @staticmethod
    def _proration_timestamp(proration_date: datetime | None) -> int:
        """The moment to prorate a plan change at: a preview's, if recent enough, else now."""
        if proration_date is None:
            return clock.timestamp()
        now = clock.now()
        if proration_date > now + PRORATION_DATE_MAX_SKEW:
            raise InvalidField("proration_date", "is in the future; send back the one the preview returned")
        if proration_date < now - PRORATION_DATE_MAX_AGE:
            minutes = int(PRORATION_DATE_MAX_AGE.total_seconds() // 60)
            raise InvalidField("proration_date", f"is older than {minutes} minutes; preview the change again")
        return int(proration_date.timestamp())

    @staticmethod
    def _estimate(plan: PricingPlan, version: PricingPlanVersion, calls: int) -> int:
        """The period's amount so far in minor units."""
        if plan.type == "subscription":
            overage = overage_amount(
                version.currency, version.overage_price_per_call, version.call_limit, calls
            )
            return (version.monthly_amount or 0) + overage
        if plan.type == "pay_per_use" and version.price_per_call is not None:
            amount = (version.price_per_call * calls).scaleb(exponent(version.currency))
            return int(amount.quantize(1, rounding=ROUND_HALF_UP))
        return 0

    async def _owned(
        self, principal: Principal, subscription_id: uuid.UUID, *, for_update: bool = False
    ) -> Subscription:
        """The caller's subscription; anybody else's is answered as if it did not exist."""
        try:
            consumer = await self._consumers.require_own(principal)
        except NotFound:
            raise NotFound("Subscription not found") from None
        subscription = await self._repo.get_owned(subscription_id, consumer.id, for_update=for_update)
        if subscription is None:
            raise NotFound("Subscription not found")
        return subscription

    async def _held(self, subscription: Subscription) -> tuple[PricingPlan, PricingPlanVersion]:
        found = await self._plans.get_version(subscription.pricing_plan_id, subscription.plan_version)
        if found is None:  # the foreign key makes this impossible
            raise NotFound("Plan not found")
        return found

    async def _replayed(self, subscription: Subscription) -> SubscriptionOut:
        """What the subscribe that made `subscription` answered: with the first payment's client
        secret while it is incomplete (Stripe keeps it; our row does not)."""
        client_secret = None
        if subscription.status == "incomplete" and subscription.stripe_subscription_id is not None:
            client_secret = await self._stripe.payment_client_secret(subscription.stripe_subscription_id)
        plan, version = await self._held(subscription)
        return subscription_out(subscription, plan, version, client_secret=client_secret)

    async def _out(self, subscription: Subscription) -> SubscriptionOut:
        plan, version = await self._held(subscription)
        return subscription_out(subscription, plan, version)

    async def _sellable_plan(
        self, plan_id: uuid.UUID, *, api_id: str | None = None
    ) -> tuple[PricingPlan, PricingPlanVersion]:
        found = await self._plans.get_current(plan_id, api_id=api_id)
        if found is None:
            raise NotFound("Plan not found")
        plan, version = found
        if not plan.is_active:
            raise Conflict("This plan is no longer offered", code="plan_inactive")
        return plan, version

    async def _change_target(
        self, subscription: Subscription, new_plan_id: uuid.UUID
    ) -> tuple[PricingPlan, PricingPlanVersion]:
        if subscription.status not in RUNNING:
            raise Conflict(
                f"A {subscription.status} subscription cannot change plan", code="subscription_not_running"
            )
        found = await self._plans.get_current(new_plan_id)
        if found is None:
            raise NotFound("Plan not found")
        if found[0].api_id != subscription.api_id:
            raise InvalidField("new_pricing_plan_id", "must be a plan of the same API")
        return await self._sellable_plan(new_plan_id)

    async def _insert(self, subscription: Subscription) -> None:
        try:
            async with self._session.begin_nested():
                self._repo.add(subscription)
                await self._repo.flush()
        except IntegrityError:
            raise Conflict(
                "You already have a live subscription to this API", code="already_subscribed"
            ) from None

    async def _card_for(self, consumer: Consumer, payment_method_id: str | None) -> str:
        """The card to charge: the one sent (attached first if new), else the default."""
        if payment_method_id is not None:
            card = await self._cards.attach(consumer, payment_method_id)
            return card.stripe_payment_method_id
        default = await self._cards.default_for(consumer)
        if default is None:
            raise InvalidField(
                "payment_method_id", "add a card first (POST /api/v1/payment-methods) or send one here"
            )
        return default.stripe_payment_method_id

    async def _apply_created(self, subscription: Subscription, created: StripeSubscription) -> str | None:
        """Mirror a new Stripe subscription. When its first payment waits for the consumer (SCA, or
        a declined card to replace in Stripe.js) it stays `incomplete` and the client secret is
        returned; Stripe expires it after 23 hours if nothing happens."""
        observed = created.state.created or clock.timestamp()
        await apply_stripe_state(self._outbox, subscription, created.state, observed_at=observed)
        return created.client_secret

    async def _mirror(self, subscription: Subscription, result: StripeSubscription) -> None:
        """Mirror Stripe's answer to our change as of when Stripe gave it, by Stripe's clock."""
        observed = result.state.as_of or 0
        await apply_stripe_state(self._outbox, subscription, result.state, observed_at=observed)

    @staticmethod
    def _detach_stripe(subscription: Subscription) -> None:
        """Forget the Stripe subscription a downgrade to free ended, so its late events miss this row."""
        subscription.stripe_subscription_id = None
        subscription.stripe_subscription_item_id = None
        subscription.stripe_overage_item_id = None
        subscription.stripe_state_at = None
        subscription.trial_end = None
        subscription.cancel_at_period_end = False
        subscription.expires_at = None
        subscription.unmatched_stripe_price_id = None

    @staticmethod
    def _start_free_period(subscription: Subscription) -> None:
        now = clock.now()
        subscription.current_period_start = now
        subscription.current_period_end = add_months(now, 1)

    @staticmethod
    def _customer(consumer: Consumer) -> str:
        assert consumer.stripe_customer_id is not None  # noqa: S101  (require_own checked it)
        return consumer.stripe_customer_id

    @staticmethod
    def _price(version: PricingPlanVersion) -> str:
        if version.stripe_price_id is None:
            raise Conflict("This plan has no Stripe price yet", code="plan_not_published")
        return version.stripe_price_id

    @staticmethod
    def _metadata(
        subscription: Subscription,
        plan: PricingPlan | None = None,
        version: PricingPlanVersion | None = None,
    ) -> dict[str, str]:
        return {
            "subscription_id": str(subscription.id),
            "consumer_id": str(subscription.consumer_id),
            "api_id": subscription.api_id,
            "plan_id": str(plan.id if plan else subscription.pricing_plan_id),
            "plan_version": str(version.version if version else subscription.plan_version),
        }
