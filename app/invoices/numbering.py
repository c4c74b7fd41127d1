"""Our own invoice numbers, for invoices Stripe gave none: one gap-free sequence per issuer.

The counter row is bumped in the transaction that stores the number, so a rollback gives the
number back and concurrent mirrors queue on the row lock: no gaps, no duplicates.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Invoice, InvoiceNumberSequence

NUMBER_FORMAT = "INV-{:06d}"


async def next_invoice_number(session: AsyncSession, issuer: str) -> str:
    """The issuer's next number (INV-000001, INV-000002, ...), taken inside the caller's transaction."""
    statement = (
        insert(InvoiceNumberSequence)
        .values(issuer=issuer, last_number=1)
        .on_conflict_do_update(
            index_elements=[InvoiceNumberSequence.issuer],
            set_={"last_number": InvoiceNumberSequence.last_number + 1},
        )
        .returning(InvoiceNumberSequence.last_number)
    )
    number = (await session.execute(statement)).scalar_one()
    return NUMBER_FORMAT.format(number)


async def number_if_final(session: AsyncSession, invoice: Invoice, issuer: str) -> None:
    """Give a finalised invoice (anything past draft) without a Stripe number one of ours, once."""
    if invoice.number is None and invoice.status != "draft":
        invoice.number = await next_invoice_number(session, issuer)
