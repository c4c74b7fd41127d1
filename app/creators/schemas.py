from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Url = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]
ConnectStatus = Literal["not_started", "onboarding", "active"]


class ConnectOnboardingIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "return_url": "https://marketplace.example/creator/payouts",
                    "refresh_url": "https://marketplace.example/creator/payouts?retry=1",
                }
            ]
        },
    )

    return_url: Url = Field(description="Where Stripe sends the creator after onboarding")
    refresh_url: Url = Field(description="Where Stripe sends the creator when the link expired")


class ConnectAccountOut(BaseModel):
    stripe_account_id: str | None = Field(
        description="The creator's Stripe Connect Express account (`acct_...`), null before onboarding"
    )
    status: ConnectStatus = Field(
        description="`not_started`, `onboarding` (details missing) or `active` (payouts enabled)"
    )
    details_submitted: bool = Field(description="Stripe has the creator's onboarding details")
    charges_enabled: bool = Field(description="Stripe lets the account receive transfers")
    payouts_enabled: bool = Field(description="Stripe pays the account out to its bank")


class ConnectOnboardingOut(ConnectAccountOut):
    url: str = Field(description="The onboarding link to open in the browser (single use)")
    expires_at: datetime = Field(description="When the link stops working (ISO 8601, UTC)")
