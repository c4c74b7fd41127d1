from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.dependencies import AdminOnly, CurrentUser
from app.dependencies import CustomInvoices as CustomService
from app.dependencies import InvoiceReader as Reader
from app.http import DayOrTime, error_responses
from app.invoices.schemas import (
    CustomInvoiceIn,
    InvoiceDetail,
    InvoiceDownload,
    InvoiceList,
    InvoiceStatus,
)

router = APIRouter(prefix="/invoices", tags=["invoices"])
admin_router = APIRouter(prefix="/admin/invoices", tags=["invoices"])


@router.get("", summary="List the caller's invoices, newest first", responses=error_responses(401))
async def list_invoices(
    principal: CurrentUser,
    service: Reader,
    status: InvoiceStatus | None = None,
    subscription_id: uuid.UUID | None = None,
    date_from: Annotated[
        DayOrTime | None,
        Query(alias="from", description="Created on or after: a UTC day or a timestamp"),
    ] = None,
    date_to: Annotated[
        DayOrTime | None,
        Query(alias="to", description="Created on or before: a UTC day or a timestamp"),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> InvoiceList:
    return await service.list_own(
        principal,
        status=status,
        subscription_id=subscription_id,
        date_from=date_from,
        date_to=date_to,
        cursor=cursor,
        limit=limit,
    )


@router.get("/{invoice_id}", summary="Get an invoice with its lines", responses=error_responses(401, 404))
async def get_invoice(invoice_id: uuid.UUID, principal: CurrentUser, service: Reader) -> InvoiceDetail:
    return await service.get(principal, invoice_id)


@router.get(
    "/{invoice_id}/download",
    summary="Where to download the invoice PDF (Stripe's, else ours)",
    responses=error_responses(401, 404),
)
async def download_invoice(invoice_id: uuid.UUID, principal: CurrentUser, service: Reader) -> InvoiceDownload:
    return InvoiceDownload(download_url=await service.download_url(principal, invoice_id))


@router.get(
    "/{invoice_id}/pdf",
    summary="The invoice as a PDF rendered by billing",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **error_responses(401, 404)},
)
async def invoice_pdf(invoice_id: uuid.UUID, principal: CurrentUser, service: Reader) -> Response:
    filename, content = await service.render_pdf(principal, invoice_id)
    return Response(
        content,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )


@admin_router.post(
    "",
    summary="Create, finalise and send a one-off invoice with custom lines (admin)",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 404, 502),
)
async def create_custom_invoice(
    body: CustomInvoiceIn,
    principal: AdminOnly,
    service: CustomService,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> InvoiceDetail:
    return await service.create(principal, body, idempotency_key=idempotency_key)
