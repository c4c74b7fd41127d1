from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ConsumerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    consumer_id: uuid.UUID
    stripe_customer_id: str | None
    email: str | None
    created_at: datetime
