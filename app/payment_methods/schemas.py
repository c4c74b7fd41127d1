from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

StripePaymentMethodId = Annotated[str, StringConstraints(pattern=r"^(pm|card|src)_[A-Za-z0-9_]{1,200}$")]


class PaymentMethodCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"payment_method_id": "pm_card_visa"}]}
    )

    payment_method_id: StripePaymentMethodId = Field(
        description="A Stripe PaymentMethod id from Stripe.js (`pm_...`)"
    )


class CardOut(BaseModel):
    brand: str | None = Field(description="Card brand as Stripe names it (`visa`, `mastercard`, ...)")
    last4: str | None = Field(description="Last four digits of the card number")
    exp_month: int | None = Field(description="Expiry month, 1-12")
    exp_year: int | None = Field(description="Expiry year, four digits")


class PaymentMethodOut(BaseModel):
    id: str = Field(description="The Stripe PaymentMethod id (`pm_...`)")
    type: Literal["card"] = Field(description="Always `card`")
    card: CardOut = Field(description="The card's brand, last digits and expiry")
    is_default: bool = Field(description="True for the card that pays new subscriptions and invoices")
    created_at: datetime = Field(description="When the card was added (ISO 8601, UTC)")


class PaymentMethodList(BaseModel):
    payment_methods: list[PaymentMethodOut] = Field(description="The caller's cards, default first")


class SetupIntentOut(BaseModel):
    client_secret: str = Field(description="The SetupIntent's client secret for Stripe.js `confirmCardSetup`")
