from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from decimal import Decimal

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal
from app.config import Settings
from app.errors import InvalidField, NotFound
from app.invoices.lines import InvoiceLine, parse_line
from app.invoices.pdf import InvoiceDocument, Party, render_invoice_pdf
from app.invoices.repository import InvoiceRepository
from app.invoices.schemas import (
    InvoiceDetail,
    InvoiceLineOut,
    InvoiceList,
    InvoiceOut,
    InvoiceStatus,
)
from app.models import Consumer, Invoice
from app.pagination import decode_cursor, encode_cursor
from app.stripe import StripeGateway

PDF_PATH = "/api/v1/invoices/{id}/pdf"


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
        number = document_number(invoice)
        document = InvoiceDocument(
            issuer=Party(
                settings.invoice_issuer_name,
                (
                    *[p.strip() for p in settings.invoice_issuer_address.split(",", 1)],
                    settings.invoice_issuer_email,
                ),
            ),
            bill_to=bill_to_party(invoice, consumer),
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
            description=invoice.description,
            due_at=None if invoice.status == "void" else invoice.due_date or invoice.created_at,
        )
        # Rendering is CPU work: off the event loop.
        content = await anyio.to_thread.run_sync(render_invoice_pdf, document)
        return f"invoice-{number}.pdf", content

    async def _readable(self, principal: Principal, invoice_id: uuid.UUID) -> tuple[Invoice, Consumer]:
        found = await self._repo.get_with_consumer(invoice_id)
        if found is None or not (principal.is_admin or found[1].user_id == principal.user_id):
            raise NotFound("Invoice not found")
        return found

    async def _lines(self, invoice: Invoice) -> list[InvoiceLine]:
        raw_lines = [raw for raw in invoice.lines or [] if isinstance(raw, dict)]
        lines = [with_unit_price(parse_line(raw, invoice.currency)) for raw in raw_lines]
        # A subscription line may name only its Stripe price: its plan is the price's plan.
        prices = {str(raw["price_id"]) for raw in raw_lines if raw.get("price_id")}
        plans = await self._repo.plans_of_prices(prices)
        lines = [
            replace(
                line, plan_id=line.plan_id or plans[price][0], plan_name=line.plan_name or plans[price][1]
            )
            if (price := str(raw.get("price_id"))) in plans and not line.plan_name
            else line
            for line, raw in zip(lines, raw_lines, strict=True)
        ]
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


def document_number(invoice: Invoice) -> str:
    """The number printed on the PDF: Stripe's or ours; only a draft has none yet."""
    if invoice.number:
        return invoice.number
    return f"DRAFT-{str(invoice.id)[:8].upper()}" if invoice.status == "draft" else "(not numbered yet)"


def bill_to_party(invoice: Invoice, consumer: Consumer) -> Party:
    """The bill-to block from the name and address Stripe put on the invoice, else the account's email."""
    address = {key: str(value) for key, value in (invoice.customer_address or {}).items() if value}
    postal, city, state = address.get("postal_code"), address.get("city"), address.get("state")
    if address.get("country") == "US":  # Seattle, WA 98101
        locality = ", ".join(filter(None, (city, " ".join(filter(None, (state, postal))))))
        region = None
    else:  # 75002 Paris
        locality, region = " ".join(filter(None, (postal, city))), state
    lines = [
        v for v in (address.get("line1"), address.get("line2"), locality, region, address.get("country")) if v
    ]
    if invoice.customer_name and consumer.email:
        lines.append(consumer.email)
    return Party(invoice.customer_name or consumer.email or consumer.user_id, tuple(lines))


def with_unit_price(line: InvoiceLine) -> InvoiceLine:
    """A line without a unit price shows its amount per unit (what Stripe charges per unit)."""
    if line.unit_amount is not None or line.quantity <= 0:
        return line
    return replace(line, unit_amount=Decimal(line.amount) / line.quantity)


def _with_plan_name(line: InvoiceLine, name: str | None) -> InvoiceLine:
    return replace(line, plan_name=name)
