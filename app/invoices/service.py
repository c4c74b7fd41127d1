from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from decimal import Decimal

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth import Principal
from app.config import Settings
from app.errors import InvalidField, NotFound
from app.invoices.lines import InvoiceLine, parse_line, stored_line
from app.invoices.pdf import InvoiceDocument, Party, render_invoice_pdf
from app.invoices.repository import InvoiceRepository
from app.invoices.schemas import (
    CustomInvoiceIn,
    InvoiceDetail,
    InvoiceLineOut,
    InvoiceList,
    InvoiceOut,
    InvoiceStatus,
)
from app.models import Consumer, Invoice
from app.money import chargeable_problem
from app.pagination import decode_cursor, encode_cursor
from app.stripe import StripeGateway
from app.stripe.invoices import StripeInvoice

PDF_PATH = "/api/v1/invoices/{id}/pdf"
CUSTOM_INVOICE_NAMESPACE = uuid.UUID("9b6c1f8e-61a4-4d8e-9a63-2f4c0c1f7d21")


def invoice_out(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(
        id=invoice.id,
        stripe_invoice_id=invoice.stripe_invoice_id,
        consumer_id=invoice.consumer_id,
        subscription_id=invoice.subscription_id,
        number=invoice.number,
        amount_paid=invoice.amount_paid,
        amount_due=invoice.amount_due,
        subtotal=invoice.subtotal,
        tax=invoice.tax,
        total=invoice.total,
        currency=invoice.currency,
        status=invoice.status,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        created_at=invoice.created_at,
        paid_at=invoice.paid_at,
        invoice_pdf=invoice.invoice_pdf,
        hosted_invoice_url=invoice.hosted_invoice_url,
    )


def _start_of(day: date) -> datetime:
    return datetime.combine(day, wall_time.min, tzinfo=UTC)


def created_bounds(date_from: date | None, date_to: date | None) -> tuple[datetime | None, datetime | None]:
    """`[from, to)` in UTC: a day means the whole day (`to` inclusive); a timestamp means itself."""
    lower = upper = None
    if isinstance(date_from, datetime):
        lower = date_from if date_from.tzinfo else date_from.replace(tzinfo=UTC)
    elif date_from is not None:
        lower = _start_of(date_from)
    if isinstance(date_to, datetime):
        upper = (date_to if date_to.tzinfo else date_to.replace(tzinfo=UTC)) + timedelta(microseconds=1)
    elif date_to is not None:
        upper = _start_of(date_to + timedelta(days=1))
    if lower is not None and upper is not None and lower >= upper:
        raise InvalidField("from", "must not be after `to`")
    return lower, upper


class InvoiceService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway, settings: Settings) -> None:
        self._repo = InvoiceRepository(session)
        self._stripe = stripe
        self._settings = settings

    async def list_own(
        self,
        principal: Principal,
        *,
        status: InvoiceStatus | None,
        subscription_id: uuid.UUID | None,
        date_from: date | datetime | None,
        date_to: date | datetime | None,
        cursor: str | None,
        limit: int,
    ) -> InvoiceList:
        """The caller's own invoices, newest first; `from` and `to` are inclusive."""
        created_from, created_before = created_bounds(date_from, date_to)
        rows = await self._repo.list_for_user(
            principal.user_id,
            status=status,
            subscription_id=subscription_id,
            created_from=created_from,
            created_before=created_before,
            after=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = list(rows[:limit])
        next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
        return InvoiceList(invoices=[invoice_out(i) for i in page], next_cursor=next_cursor)

    async def get(self, principal: Principal, invoice_id: uuid.UUID) -> InvoiceDetail:
        """One invoice with its lines; another consumer's invoice is not found (admins see all)."""
        invoice, _ = await self._readable(principal, invoice_id)
        lines = await self._lines(invoice)
        return InvoiceDetail(
            **invoice_out(invoice).model_dump(),
            lines=[
                InvoiceLineOut(
                    description=line.description,
                    plan_id=line.plan_id,
                    plan_name=line.plan_name,
                    period_start=line.period_start,
                    period_end=line.period_end,
                    quantity=line.quantity,
                    unit_amount=line.unit_amount,
                    amount=line.amount,
                    tax=line.tax,
                    currency=line.currency,
                )
                for line in lines
            ],
        )

    async def download_url(self, principal: Principal, invoice_id: uuid.UUID) -> str:
        """Stripe's PDF when Stripe has one, else our own PDF route."""
        invoice, _ = await self._readable(principal, invoice_id)
        return invoice.invoice_pdf or PDF_PATH.format(id=invoice.id)

    async def render_pdf(self, principal: Principal, invoice_id: uuid.UUID) -> tuple[str, bytes]:
        """Our rendering of the invoice: (file name, PDF bytes)."""
        invoice, consumer = await self._readable(principal, invoice_id)
        lines = await self._lines(invoice)
        settings = self._settings
        number = invoice.number or f"DRAFT-{str(invoice.id)[:8].upper()}"
        bill_to = [f"Customer {consumer.stripe_customer_id}"] if consumer.stripe_customer_id else []
        document = InvoiceDocument(
            issuer=Party(
                settings.invoice_issuer_name,
                (
                    *[p.strip() for p in settings.invoice_issuer_address.split(",", 1)],
                    settings.invoice_issuer_email,
                ),
            ),
            bill_to=Party(consumer.email or consumer.user_id, (f"Account {consumer.id}", *bill_to)),
            number=number,
            status=invoice.status,
            currency=invoice.currency,
            issued_at=invoice.created_at,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            paid_at=invoice.paid_at,
            lines=tuple(lines),
            subtotal=invoice.subtotal,
            tax=invoice.tax,
            total=invoice.total,
            amount_paid=invoice.amount_paid,
            amount_due=invoice.amount_due,
        )
        # Rendering is CPU work: off the event loop.
        content = await anyio.to_thread.run_sync(render_invoice_pdf, document)
        return f"invoice-{number}.pdf", content

    async def create_custom(
        self, principal: Principal, data: CustomInvoiceIn, *, idempotency_key: str | None
    ) -> InvoiceDetail:
        """A one-off invoice with custom lines, created, finalised and sent through Stripe, mirrored here.

        Our invoice id derives from the request's Idempotency-Key when there is one, and every
        Stripe call's key from that id, so a retried request never makes a second invoice.
        """
        for index, line in enumerate(data.lines):
            problem = chargeable_problem(line.unit_amount, data.currency)
            if problem is not None:
                raise InvalidField(f"lines.{index}.unit_amount", problem)
        consumer = await self._repo.get_consumer(data.consumer_id)
        if consumer is None or consumer.stripe_customer_id is None:
            raise NotFound("Consumer not found (or not registered with Stripe yet)")
        invoice_id = (
            uuid.uuid5(CUSTOM_INVOICE_NAMESPACE, f"{principal.user_id}:{idempotency_key}")
            if idempotency_key
            else uuid.uuid4()
        )
        customer = consumer.stripe_customer_id
        metadata = {"invoice_id": str(invoice_id), "consumer_id": str(consumer.id), "kind": "custom"}
        draft = await self._stripe.create_invoice(
            customer=customer,
            currency=data.currency,
            description=data.description,
            days_until_due=(
                data.days_until_due
                if data.days_until_due is not None
                else self._settings.invoice_days_until_due
            ),
            automatic_tax=self._settings.stripe_tax_enabled,
            metadata=metadata,
            idempotency_key=f"invoice-create:{invoice_id}",
        )
        for index, line in enumerate(data.lines):
            await self._stripe.add_invoice_item(
                customer=customer,
                invoice=draft.id,
                currency=data.currency,
                description=line.description,
                quantity=line.quantity,
                unit_amount_decimal=Decimal(line.unit_amount),
                metadata={"invoice_id": str(invoice_id), "line": str(index)},
                idempotency_key=f"invoice-item:{invoice_id}:{index}",
            )
        await self._stripe.finalize_invoice(draft.id, idempotency_key=f"invoice-finalize:{invoice_id}")
        sent = await self._stripe.send_invoice(draft.id, idempotency_key=f"invoice-send:{invoice_id}")
        await self._repo.insert_if_absent(self._mirror_values(invoice_id, consumer, sent))
        mirrored = await self._repo.get_by_stripe_id(sent.id)
        if mirrored is None:  # pragma: no cover - inserted just above or by a concurrent mirror
            raise NotFound("Invoice not found")
        return await self.get(principal, mirrored.id)

    @staticmethod
    def _mirror_values(invoice_id: uuid.UUID, consumer: Consumer, sent: StripeInvoice) -> dict[str, object]:
        return {
            "id": invoice_id,
            "stripe_invoice_id": sent.id,
            "consumer_id": consumer.id,
            "subscription_id": None,
            "number": sent.number,
            "status": sent.status,
            "currency": sent.currency,
            "amount_due": sent.amount_due,
            "amount_paid": sent.amount_paid,
            "subtotal": sent.subtotal,
            "tax": sent.tax,
            "total": sent.total,
            "starting_balance": sent.starting_balance,
            "ending_balance": sent.ending_balance,
            "period_start": sent.period_start,
            "period_end": sent.period_end,
            "paid_at": sent.paid_at,
            "invoice_pdf": sent.invoice_pdf,
            "hosted_invoice_url": sent.hosted_invoice_url,
            "lines": [stored_line(line) for line in sent.lines],
            "stripe_state_at": clock.timestamp(),
            "created_at": sent.created or clock.now(),
        }

    async def _readable(self, principal: Principal, invoice_id: uuid.UUID) -> tuple[Invoice, Consumer]:
        found = await self._repo.get_with_consumer(invoice_id)
        if found is None or not (principal.is_admin or found[1].user_id == principal.user_id):
            raise NotFound("Invoice not found")
        return found

    async def _lines(self, invoice: Invoice) -> list[InvoiceLine]:
        lines = [parse_line(raw, invoice.currency) for raw in invoice.lines or [] if isinstance(raw, dict)]
        missing: set[uuid.UUID] = set()
        for line in lines:
            if line.plan_id and not line.plan_name:
                try:
                    missing.add(uuid.UUID(line.plan_id))
                except ValueError:
                    continue
        names = await self._repo.plan_names(missing)
        return [
            line if line.plan_name or not line.plan_id else _with_plan_name(line, names.get(line.plan_id))
            for line in lines
        ]


def _with_plan_name(line: InvoiceLine, name: str | None) -> InvoiceLine:
    return replace(line, plan_name=name)
