from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal
from app.consumers.repository import ConsumerRepository
from app.db.unit_of_work import release_connection
from app.errors import NotFound
from app.models import Consumer
from app.stripe import StripeGateway

# Consumer ids derive from the user id, so a retried registration reuses its Stripe idempotency key.
CONSUMER_NAMESPACE = uuid.UUID("5b0d7a8e-3f0c-4f8e-9a51-6f7f0c2b9d11")


def consumer_id_for(user_id: str) -> uuid.UUID:
    return uuid.uuid5(CONSUMER_NAMESPACE, user_id)


class ConsumerService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway) -> None:
        self._session = session
        self._repo = ConsumerRepository(session)
        self._stripe = stripe

    async def register(self, principal: Principal) -> tuple[Consumer, bool]:
        """Create the caller's consumer and Stripe customer, or return the existing one.

        Returns the consumer and whether this call created it. The Stripe customer is created
        before the row is written, with no database connection held meanwhile; concurrent calls
        for one user send one idempotency key (the consumer id derives from the user id), so
        Stripe creates one customer and every call stores that one (a call sent while another
        is still creating it waits for that one's answer, `StripeBase._call`).
        """
        consumer = await self._repo.get_by_user(principal.user_id)
        if consumer is not None and consumer.stripe_customer_id is not None:
            return consumer, False
        consumer_id = consumer.id if consumer is not None else consumer_id_for(principal.user_id)
        email = consumer.email if consumer is not None else principal.email
        # Stripe may take a while: no pooled connection (nor lock) is held while it answers.
        await release_connection(self._session)
        # Stripe refuses, for 24 h, a key sent again with other parameters: the create carries only
        # what derives from the user id, so every attempt sends the same. The email, which a later
        # token may change (say, after an attempt whose row was not stored), is set after it.
        customer = await self._stripe.create_customer(
            email=None,
            metadata={"user_id": principal.user_id, "consumer_id": str(consumer_id)},
            idempotency_key=f"customer-create:{consumer_id}",
        )
        if email and customer.email != email:
            # Setting a value is idempotent by itself: a fresh key per attempt, the SDK retries it.
            await self._stripe.set_customer_email(
                customer.id, email, idempotency_key=f"customer-email:{consumer_id}:{uuid.uuid4()}"
            )
        return await self._repo.save_with_customer(consumer_id, principal.user_id, email, customer.id)

    async def get(self, principal: Principal, consumer_id: uuid.UUID) -> Consumer:
        """The consumer, if it is the caller's own or the caller is an admin."""
        consumer = await self._repo.get(consumer_id)
        if consumer is None or (consumer.user_id != principal.user_id and not principal.is_admin):
            raise NotFound("Consumer not found")
        return consumer

    async def require_own(self, principal: Principal) -> Consumer:
        """The caller's consumer with its Stripe customer; 404 until they have registered."""
        consumer = await self._repo.get_by_user(principal.user_id)
        if consumer is None or consumer.stripe_customer_id is None:
            raise NotFound(
                "Register as a consumer first (POST /api/v1/consumers/register)", code="not_registered"
            )
        return consumer

    async def create_portal_session(self, principal: Principal, return_url: str) -> str:
        """A Stripe billing-portal URL for the caller's customer."""
        consumer = await self.require_own(principal)
        assert consumer.stripe_customer_id is not None  # noqa: S101  (require_own checked it)
        return await self._stripe.create_portal_session(
            customer=consumer.stripe_customer_id, return_url=return_url
        )
