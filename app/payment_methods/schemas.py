from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

StripePaymentMethodId = Annotated[str, StringConstraints(pattern=r"^(pm|card|src)_[A-Za-z0-9_]{1,200}$")]


class PaymentMethodCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_method_id: StripePaymentMethodId


class CardOut(BaseModel):
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


class PaymentMethodOut(BaseModel):
    id: str
    type: Literal["card"]
    card: CardOut
    is_default: bool
    created_at: datetime


class PaymentMethodList(BaseModel):
    payment_methods: list[PaymentMethodOut]


class SetupIntentOut(BaseModel):
    client_secret: str
