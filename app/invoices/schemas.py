from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.money import CURRENCIES, JsonDecimal

InvoiceStatus = Literal["draft", "open", "paid", "uncollectible", "void"]


class InvoiceLineOut(BaseModel):
    description: str | None
    plan_id: str | None = None
    plan_name: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    quantity: int
    # Minor units like `amount`, but may be a fraction (per-call prices below one cent).
    unit_amount: JsonDecimal | None = None
    amount: int
    tax: int
    currency: str


class InvoiceOut(BaseModel):
    id: uuid.UUID
    stripe_invoice_id: str
    consumer_id: uuid.UUID
    subscription_id: uuid.UUID | None = None
    number: str | None
    amount_paid: int
    amount_due: int
    subtotal: int
    tax: int
    total: int
    currency: str
    status: InvoiceStatus
    period_start: datetime | None
    period_end: datetime | None
    created_at: datetime
    paid_at: datetime | None = None
    invoice_pdf: str | None = None
    hosted_invoice_url: str | None = None


class InvoiceDetail(InvoiceOut):
    lines: list[InvoiceLineOut]


class InvoiceList(BaseModel):
    invoices: list[InvoiceOut]
    next_cursor: str | None


class InvoiceDownload(BaseModel):
    download_url: str


MAX_CUSTOM_LINES = 100


class CustomLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    description: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    quantity: int = Field(1, ge=1, le=1_000_000)
    # Integer minor units (cents for USD), as every amount in the contract.
    unit_amount: int = Field(ge=0, le=100_000_000_00)


class CustomInvoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    consumer_id: uuid.UUID
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)]
    lines: list[CustomLineIn] = Field(min_length=1, max_length=MAX_CUSTOM_LINES)
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    days_until_due: int | None = Field(None, ge=0, le=365)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        value = value.lower()
        if value not in CURRENCIES:
            raise ValueError(f"unknown or unsupported currency {value!r} (use an ISO 4217 code such as usd)")
        return value
