from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from pydantic import BaseModel, Field


class UsageCounts(BaseModel):
    calls: int = Field(description="Calls (count)")
    successful_calls: int = Field(description="Calls that succeeded (count)")
    failed_calls: int = Field(description="Calls that failed (count)")
    unique_consumers: int = Field(description="Distinct consumers who called (count)")


class UsageDay(UsageCounts):
    date: Annotated[date, Field(description="The UTC day")]


class UsagePlan(UsageCounts):
    plan_id: uuid.UUID = Field(description="The plan")
    plan_name: str | None = Field(description="The plan's name")


class TopConsumer(BaseModel):
    consumer_id: uuid.UUID = Field(description="The consumer")
    calls: int = Field(description="Their calls in the range (count)")


class UsageReport(BaseModel):
    api_id: str = Field(description="The API")
    from_: date = Field(serialization_alias="from", description="First UTC day of the range")
    to: date = Field(description="Last UTC day of the range (included)")
    totals: UsageCounts = Field(description="Counts over the whole range")
    daily: list[UsageDay] = Field(description="One entry per UTC day")
    plans: list[UsagePlan] = Field(description="Counts per plan")
    top_consumers: list[TopConsumer] = Field(description="The consumers with the most calls")


class EarningAmounts(BaseModel):
    """Minor units of `currency`; net = gross - commission. Reversals count negative."""

    gross_amount: int = Field(
        description="What consumers paid before tax, in integer minor units of `currency` (cents for usd)"
    )
    commission_amount: int = Field(
        description="The platform's commission, in integer minor units of `currency` (cents for usd)"
    )
    net_amount: int = Field(
        description="The creator's share, gross - commission, in integer minor units of `currency`"
    )


class EarningMonth(EarningAmounts):
    month: str = Field(description="The UTC month, `YYYY-MM`")  # YYYY-MM (UTC)


class EarningPlan(EarningAmounts):
    plan_id: uuid.UUID = Field(description="The plan")
    plan_name: str | None = Field(description="The plan's name")


class CurrencyEarnings(EarningAmounts):
    currency: str = Field(description="Lowercase ISO 4217 currency of these amounts")
    # Net by payout state: in the refund window, ready to pay out, already transferred.
    pending_amount: int = Field(
        description="Net still in the refund window, in integer minor units of `currency` (cents for usd)"
    )
    available_amount: int = Field(
        description="Net ready to pay out, in integer minor units of `currency` (cents for usd)"
    )
    paid_out_amount: int = Field(
        description="Net already transferred, in integer minor units of `currency` (cents for usd)"
    )
    months: list[EarningMonth] = Field(description="Per UTC month")
    plans: list[EarningPlan] = Field(description="Per plan")


class EarningsReport(BaseModel):
    api_id: str = Field(description="The API")
    from_: date = Field(serialization_alias="from", description="First UTC day of the range")
    to: date = Field(description="Last UTC day of the range (included)")
    commission_rate: str = Field(description="The platform's share as a decimal string (`0.20` = 20%)")
    currencies: list[CurrencyEarnings] = Field(description="One entry per currency earned in")
