from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.money import CURRENCIES, JsonDecimal

InvoiceStatus = Literal["draft", "open", "paid", "uncollectible", "void"]


class InvoiceLineOut(BaseModel):
    description: str | None = Field(description="What the line bills")
    plan_id: str | None = Field(None, description="The plan the line is for, if any")
    plan_name: str | None = Field(None, description="That plan's name")
    period_start: datetime | None = Field(None, description="Start of the period the line covers")
    period_end: datetime | None = Field(None, description="End of the period the line covers")
    quantity: int = Field(description="Units billed (calls for pay-per-use, 1 for a monthly price)")
    # Minor units like `amount`, but may be a fraction (per-call prices below one cent).
    unit_amount: JsonDecimal | None = Field(
        None, description="Price per unit in minor units of `currency`, possibly fractional (JSON number)"
    )
    amount: int = Field(
        description="Line amount before tax, in integer minor units of `currency` (cents for usd)"
    )
    tax: int = Field(description="Tax on the line, in integer minor units of `currency` (cents for usd)")
    currency: str = Field(description="Lowercase ISO 4217 currency")


class InvoiceOut(BaseModel):
    id: uuid.UUID = Field(description="Our invoice id (UUID)")
    stripe_invoice_id: str = Field(description="The Stripe invoice (`in_...`)")
    consumer_id: uuid.UUID = Field(description="The billed consumer")
    subscription_id: uuid.UUID | None = Field(None, description="The subscription billed, if any")
    number: str | None = Field(description="The invoice number (Stripe's, else ours); null while a draft")
    amount_paid: int = Field(description="Paid so far, in integer minor units of `currency` (cents for usd)")
    amount_due: int = Field(description="Still to pay, in integer minor units of `currency` (cents for usd)")
    subtotal: int = Field(
        description="Sum of the lines before tax, in integer minor units of `currency` (cents for usd)"
    )
    tax: int = Field(description="Tax, in integer minor units of `currency` (cents for usd)")
    total: int = Field(description="Subtotal plus tax, in integer minor units of `currency` (cents for usd)")
    currency: str = Field(description="Lowercase ISO 4217 currency")
    status: InvoiceStatus = Field(description="`draft`, `open`, `paid`, `uncollectible` or `void`")
    period_start: datetime | None = Field(description="Start of the billed period")
    period_end: datetime | None = Field(description="End of the billed period")
    created_at: datetime = Field(description="When Stripe created the invoice (ISO 8601, UTC)")
    paid_at: datetime | None = Field(None, description="When it was paid, if it was")
    invoice_pdf: str | None = Field(None, description="Stripe's PDF URL, when Stripe has one")
    hosted_invoice_url: str | None = Field(
        None, description="Stripe's hosted invoice page, when there is one"
    )


class InvoiceDetail(InvoiceOut):
    lines: list[InvoiceLineOut] = Field(description="The invoice's lines")


class InvoiceList(BaseModel):
    invoices: list[InvoiceOut] = Field(description="The caller's invoices, newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class InvoiceDownload(BaseModel):
    download_url: str = Field(
        description="Stripe's PDF URL, or our authenticated `/api/v1/invoices/{id}/pdf`"
    )


MAX_CUSTOM_LINES = 100


class CustomLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    description: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="What the line bills (1-500 characters)"
    )
    quantity: int = Field(1, ge=1, le=1_000_000, description="Units (default 1)")
    # Integer minor units (cents for USD), as every amount in the contract.
    unit_amount: int = Field(
        ge=0,
        le=100_000_000_00,
        description="Price per unit in integer minor units of the invoice's currency (cents for usd)",
    )


class CustomInvoiceIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "consumer_id": "3f0c2a5e-8d1b-4c47-9a3e-1f2b3c4d5e6f",
                    "currency": "usd",
                    "description": "Onboarding workshop",
                    "lines": [
                        {
                            "description": "Integration workshop (half day)",
                            "quantity": 1,
                            "unit_amount": 45000,
                        }
                    ],
                    "days_until_due": 14,
                }
            ]
        },
    )

    consumer_id: uuid.UUID = Field(description="The consumer to bill (registered with Stripe)")
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)] = Field(
        description="Lowercase ISO 4217 currency"
    )
    lines: list[CustomLineIn] = Field(min_length=1, max_length=MAX_CUSTOM_LINES, description="1-100 lines")
    description: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="A note printed on the invoice"
    )
    days_until_due: int | None = Field(
        None, ge=0, le=365, description="Days to pay (default INVOICE_DAYS_UNTIL_DUE)"
    )

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        value = value.lower()
        if value not in CURRENCIES:
            raise ValueError(f"unknown or unsupported currency {value!r} (use an ISO 4217 code such as usd)")
        return value
