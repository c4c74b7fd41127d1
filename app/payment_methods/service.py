from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal
from app.consumers.service import ConsumerService
from app.errors import Conflict, InvalidField, NotFound
from app.models import Consumer, PaymentMethod
from app.payment_methods.mirror import card_row
from app.payment_methods.repository import PaymentMethodRepository
from app.payment_methods.schemas import CardOut, PaymentMethodOut
from app.stripe import StripeGateway


def payment_method_out(payment_method: PaymentMethod) -> PaymentMethodOut:
    return PaymentMethodOut(
        id=payment_method.stripe_payment_method_id,
        type="card",
        card=CardOut(
            brand=payment_method.brand,
            last4=payment_method.last4,
            exp_month=payment_method.exp_month,
            exp_year=payment_method.exp_year,
        ),
        is_default=payment_method.is_default,
        created_at=payment_method.created_at,
    )


class PaymentMethodService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway, consumers: ConsumerService) -> None:
        self._repo = PaymentMethodRepository(session)
        self._consumers = consumers
        self._stripe = stripe

    async def add(self, principal: Principal, payment_method_id: str) -> PaymentMethod:
        """Attach a card from Stripe.js to the caller's customer and mirror it; the first becomes default."""
        consumer = await self._consumers.require_own(principal)
        return await self.attach(consumer, payment_method_id)

    async def attach(self, consumer: Consumer, payment_method_id: str) -> PaymentMethod:
        """Attach (once) and mirror a card for `consumer`. A declined or unknown card raises 402/422
        before anything is written here; a card Stripe attached but we could not make default is
        detached again."""
        cards = await self._repo.list_for(consumer.id, for_update=True)
        for card in cards:
            if card.stripe_payment_method_id == payment_method_id:
                return card
        if await self._repo.get_by_stripe_id(payment_method_id) is not None:
            raise InvalidField("payment_method_id", "not a card of yours")
        assert consumer.stripe_customer_id is not None  # noqa: S101  (require_own checked it)
        attached = await self._stripe.attach_payment_method(
            payment_method_id,
            customer=consumer.stripe_customer_id,
            idempotency_key=f"pm-attach:{consumer.id}:{payment_method_id}",
        )
        if attached.type != "card":
            raise InvalidField("payment_method_id", "only cards are supported")
        payment_method = card_row(
            consumer.id, attached, is_default=not any(card.is_default for card in cards)
        )
        if payment_method.is_default:
            try:
                await self._set_stripe_default(consumer, payment_method)
            except Exception:
                await self._stripe.detach_payment_method(
                    attached.id, idempotency_key=f"pm-detach:{payment_method.id}"
                )
                raise
        self._repo.add(payment_method)
        await self._repo.flush()
        return payment_method

    async def list(self, principal: Principal) -> list[PaymentMethod]:
        """The caller's cards from our mirror, oldest first (none before registration)."""
        try:
            consumer = await self._consumers.require_own(principal)
        except NotFound:
            return []
        return list(await self._repo.list_for(consumer.id))

    async def delete(self, principal: Principal, payment_method_id: str) -> None:
        """Detach a card. The default one is refused (409) while a paid subscription needs it and no
        other card exists; when another exists, the newest other card becomes the default."""
        consumer = await self._consumers.require_own(principal)
        cards = await self._repo.list_for(consumer.id, for_update=True)
        card = self._find(cards, payment_method_id)
        others = [c for c in cards if c.id != card.id]
        if card.is_default:
            if not others and await self._repo.has_live_paid_subscription(consumer.id):
                raise Conflict(
                    "This card pays a live subscription: add another card first, or cancel it",
                    code="payment_method_in_use",
                )
            card.is_default = False
        await self._repo.delete(card)
        await self._repo.flush()
        if not any(c.is_default for c in others) and others:
            successor = others[-1]
            successor.is_default = True
            await self._repo.flush()
            await self._set_stripe_default(consumer, successor)
        await self._stripe.detach_payment_method(
            card.stripe_payment_method_id, idempotency_key=f"pm-detach:{card.id}"
        )

    async def set_default(self, principal: Principal, payment_method_id: str) -> PaymentMethod:
        """Make a card the default for new subscriptions and the Stripe customer's invoices."""
        consumer = await self._consumers.require_own(principal)
        cards = await self._repo.list_for(consumer.id, for_update=True)
        card = self._find(cards, payment_method_id)
        if not card.is_default:
            for other in cards:
                other.is_default = False
            await self._repo.flush()
            card.is_default = True
            await self._repo.flush()
        await self._set_stripe_default(consumer, card)
        return card

    async def default_for(self, consumer: Consumer) -> PaymentMethod | None:
        return next((c for c in await self._repo.list_for(consumer.id) if c.is_default), None)

    async def create_setup_intent(self, principal: Principal) -> str:
        """A SetupIntent client secret for collecting a card with SCA in Stripe.js."""
        consumer = await self._consumers.require_own(principal)
        assert consumer.stripe_customer_id is not None  # noqa: S101
        return await self._stripe.create_setup_intent(
            customer=consumer.stripe_customer_id, idempotency_key=f"setup-intent:{uuid.uuid4()}"
        )

    async def _set_stripe_default(self, consumer: Consumer, card: PaymentMethod) -> None:
        assert consumer.stripe_customer_id is not None  # noqa: S101
        # Setting a value is naturally idempotent; a fresh key per request lets A -> B -> A work.
        await self._stripe.set_default_payment_method(
            customer=consumer.stripe_customer_id,
            payment_method_id=card.stripe_payment_method_id,
            idempotency_key=f"pm-default:{card.id}:{uuid.uuid4()}",
        )

    @staticmethod
    def _find(cards: Sequence[PaymentMethod], payment_method_id: str) -> PaymentMethod:
        for card in cards:
            if card.stripe_payment_method_id == payment_method_id:
                return card
        raise NotFound("Payment method not found")
