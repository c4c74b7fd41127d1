"""Billing Meter events: how pay-per-use usage reaches Stripe."""

from __future__ import annotations

from datetime import datetime

import stripe

from app import metrics
from app.stripe.base import StripeBase


class MeterEventRefused(Exception):
    """Stripe answered that it will not take this meter event (4xx): sending it again as it is
    gets the same answer. Other failures (5xx, 429, timeouts) leave the outcome open and raise
    the usual `DomainError`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class MeterCalls(StripeBase):
    async def report_meter_event(
        self,
        *,
        event_name: str,
        customer: str,
        value: int,
        identifier: str,
        timestamp: datetime,
        idempotency_key: str,
    ) -> None:
        """Send one meter event (POST /v1/billing/meter_events answers each event on its own).

        A resend under the same idempotency key is answered with the first answer (for 24 h),
        so a send whose answer was lost is settled by sending it again, never counted twice;
        nothing here reads error messages.
        """
        operation = "billing.meter_events.create"

        async def send() -> None:
            try:
                await self._client.v1.billing.meter_events.create_async(
                    params={
                        "event_name": event_name,
                        "identifier": identifier,
                        "timestamp": int(timestamp.timestamp()),
                        "payload": {"stripe_customer_id": customer, "value": str(value)},
                    },
                    options={"idempotency_key": idempotency_key},
                )
            except (stripe.InvalidRequestError, stripe.IdempotencyError) as exc:
                metrics.STRIPE_ERRORS.labels(operation, type(exc).__name__).inc()
                message = exc.user_message or getattr(exc, "_message", None) or "refused"
                raise MeterEventRefused(exc.code or type(exc).__name__, str(message)) from None

        await self._call(operation, send)
