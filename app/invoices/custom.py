"""Admin one-off invoices: recorded here first, then created, finalised and sent through Stripe.

Nothing is sent that we did not record. The request is committed as a `custom_invoices` row
before any Stripe call, the Stripe draft's id is committed as soon as Stripe has made it, and
every Stripe call's idempotency key derives from the row's id. A failure anywhere (ours or
Stripe's) leaves a row naming what Stripe may hold, and a retry with the same Idempotency-Key
finishes that same invoice: Stripe replays its answers for the keys, so nothing is sent twice.

This flow commits between the Stripe calls, so it holds its own sessions instead of the
request's (like the webhook processor and the usage worker).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import clock
from app.auth import Principal
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.errors import Conflict, DomainError, InvalidField, NotFound
from app.invoices.repository import InvoiceRepository
from app.invoices.schemas import CustomInvoiceIn, InvoiceDetail
from app.invoices.service import InvoiceService
from app.invoices.stripe_sync import sync_invoice
from app.models import CustomInvoice
from app.money import chargeable_problem
from app.stripe import StripeGateway
from app.stripe.invoices import StripeInvoice

CUSTOM_INVOICE_NAMESPACE = uuid.UUID("9b6c1f8e-61a4-4d8e-9a63-2f4c0c1f7d21")


def custom_invoice_id(admin_user_id: str, idempotency_key: str | None) -> uuid.UUID:
    """Our invoice id: from the request's Idempotency-Key when there is one, so a retry finds it."""
    if not idempotency_key:
        return uuid.uuid4()
    return uuid.uuid5(CUSTOM_INVOICE_NAMESPACE, f"{admin_user_id}:{idempotency_key}")


class CustomInvoiceService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        stripe: StripeGateway,
        settings: Settings,
        invoices: Callable[[AsyncSession], InvoiceService],
    ) -> None:
        self._sessions = sessions
        self._stripe = stripe
        self._settings = settings
        self._invoices = invoices  # the invoice service over a session of ours

    async def create(
        self, principal: Principal, data: CustomInvoiceIn, *, idempotency_key: str | None
    ) -> InvoiceDetail:
        """Record the invoice, then create, finalise and send it through Stripe and mirror it."""
        for index, line in enumerate(data.lines):
            problem = chargeable_problem(line.unit_amount, data.currency)
            if problem is not None:
                raise InvalidField(f"lines.{index}.unit_amount", problem)
        invoice_id = custom_invoice_id(principal.user_id, idempotency_key)
        request, customer = await self._record(principal, invoice_id, data)
        if request.state != "sent":
            sent = await self._send(request, customer)
            await self._mirror(request, sent)
        async with self._sessions() as session:
            return await self._invoices(session).get(principal, invoice_id)

    async def _record(
        self, principal: Principal, invoice_id: uuid.UUID, data: CustomInvoiceIn
    ) -> tuple[CustomInvoice, str]:
        """Commit the request (or find the one a previous try committed) before Stripe hears of it."""
        async with unit_of_work(self._sessions) as session:
            consumer = await InvoiceRepository(session).get_consumer(data.consumer_id)
            if consumer is None or consumer.stripe_customer_id is None:
                raise NotFound("Consumer not found (or not registered with Stripe yet)")
            days = data.days_until_due
            await session.execute(
                insert(CustomInvoice)
                .values(
                    id=invoice_id,
                    consumer_id=consumer.id,
                    requested_by=principal.user_id,
                    currency=data.currency,
                    description=data.description,
                    days_until_due=days if days is not None else self._settings.invoice_days_until_due,
                    lines=[line.model_dump() for line in data.lines],
                    state="pending",
                )
                .on_conflict_do_nothing()
            )
            request = await session.get(CustomInvoice, invoice_id)
            if request is None or request.consumer_id != consumer.id:
                raise Conflict("This Idempotency-Key already made an invoice for another consumer")
            return request, consumer.stripe_customer_id

    async def _send(self, request: CustomInvoice, customer: str) -> StripeInvoice:
        """Create, fill, finalise and send the Stripe invoice; keys derive from our row's id."""
        invoice_id = request.id
        metadata = {"invoice_id": str(invoice_id), "consumer_id": str(request.consumer_id), "kind": "custom"}
        try:
            draft = await self._stripe.create_invoice(
                customer=customer,
                currency=request.currency,
                description=request.description,
                days_until_due=request.days_until_due,
                automatic_tax=self._settings.stripe_tax_enabled,
                metadata=metadata,
                idempotency_key=f"invoice-create:{invoice_id}",
            )
            if request.stripe_invoice_id != draft.id:
                await self._note(invoice_id, stripe_invoice_id=draft.id)
            for index, line in enumerate(request.lines):
                await self._stripe.add_invoice_item(
                    customer=customer,
                    invoice=draft.id,
                    currency=request.currency,
                    description=str(line["description"]),
                    quantity=int(line["quantity"]),
                    unit_amount_decimal=Decimal(int(line["unit_amount"])),
                    metadata={"invoice_id": str(invoice_id), "line": str(index)},
                    idempotency_key=f"invoice-item:{invoice_id}:{index}",
                )
            await self._stripe.finalize_invoice(draft.id, idempotency_key=f"invoice-finalize:{invoice_id}")
            return await self._stripe.send_invoice(draft.id, idempotency_key=f"invoice-send:{invoice_id}")
        except DomainError as exc:
            await self._note(invoice_id, last_error=exc.message)
            raise

    async def _note(self, invoice_id: uuid.UUID, **values: Any) -> None:
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(CustomInvoice).where(CustomInvoice.id == invoice_id).values(**values)
            )

    async def _mirror(self, request: CustomInvoice, sent: StripeInvoice) -> None:
        """Mirror Stripe's answer as the webhooks do; an event that mirrored a newer state first
        (the invoice paid meanwhile) is kept."""
        async with unit_of_work(self._sessions) as session:
            await sync_invoice(
                session,
                sent,
                observed_at=sent.as_of or clock.timestamp(),
                issuer=self._settings.invoice_issuer_name,
            )
            await session.execute(
                update(CustomInvoice)
                .where(CustomInvoice.id == request.id)
                .values(state="sent", stripe_invoice_id=sent.id, last_error=None)
            )
