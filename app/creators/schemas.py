from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

Url = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]
ConnectStatus = Literal["not_started", "onboarding", "active"]


class ConnectOnboardingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: Url
    refresh_url: Url


class ConnectAccountOut(BaseModel):
    stripe_account_id: str | None
    status: ConnectStatus
    details_submitted: bool
    charges_enabled: bool
    payouts_enabled: bool


class ConnectOnboardingOut(ConnectAccountOut):
    url: str
    expires_at: datetime
