from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field


class ConsumerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    consumer_id: uuid.UUID
    stripe_customer_id: str | None
    email: str | None
    created_at: datetime


class PortalSessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: Annotated[AnyHttpUrl, Field(max_length=2000)]


class PortalSessionOut(BaseModel):
    url: str
