from __future__ import annotations

import uuid
from datetime import date

from pydantic import BaseModel, Field


class UsageCounts(BaseModel):
    calls: int
    successful_calls: int
    failed_calls: int
    unique_consumers: int


class UsageDay(UsageCounts):
    date: date


class UsagePlan(UsageCounts):
    plan_id: uuid.UUID
    plan_name: str | None


class TopConsumer(BaseModel):
    consumer_id: uuid.UUID
    calls: int


class UsageReport(BaseModel):
    api_id: str
    from_: date = Field(serialization_alias="from")
    to: date
    totals: UsageCounts
    daily: list[UsageDay]
    plans: list[UsagePlan]
    top_consumers: list[TopConsumer]


class EarningAmounts(BaseModel):
    """Minor units of `currency`; net = gross - commission. Reversals count negative."""

    gross_amount: int
    commission_amount: int
    net_amount: int


class EarningMonth(EarningAmounts):
    month: str  # YYYY-MM (UTC)


class EarningPlan(EarningAmounts):
    plan_id: uuid.UUID
    plan_name: str | None


class CurrencyEarnings(EarningAmounts):
    currency: str
    # Net by payout state: in the refund window, ready to pay out, already transferred.
    pending_amount: int
    available_amount: int
    paid_out_amount: int
    months: list[EarningMonth]
    plans: list[EarningPlan]


class EarningsReport(BaseModel):
    api_id: str
    from_: date = Field(serialization_alias="from")
    to: date
    commission_rate: str
    currencies: list[CurrencyEarnings]
