from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field


class ConsumerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    consumer_id: uuid.UUID = Field(description="Our consumer id (UUID)")
    stripe_customer_id: str | None = Field(
        description="The Stripe customer (`cus_...`); null until Stripe has answered"
    )
    email: str | None = Field(description="The email copied from the token to the Stripe customer")
    created_at: datetime = Field(description="When the consumer registered (ISO 8601, UTC)")


class PortalSessionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"return_url": "https://marketplace.example/billing"}]},
    )

    return_url: Annotated[AnyHttpUrl, Field(max_length=2000)] = Field(
        description="Where the Stripe billing portal sends the user back to"
    )


class PortalSessionOut(BaseModel):
    url: str = Field(description="The Stripe billing portal session URL (short-lived)")
