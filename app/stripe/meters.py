"""Billing Meter events: how pay-per-use usage reaches Stripe."""

from __future__ import annotations

from datetime import datetime

import stripe

from app.stripe.base import StripeBase


class MeterCalls(StripeBase):
    async def report_meter_event(
        self, *, event_name: str, customer: str, value: int, identifier: str, timestamp: datetime
    ) -> bool:
        """Send one meter event; False if Stripe already has one with this identifier.

        The identifier is deterministic per subscription and window, so a repeat never counts twice.
        """

        async def send() -> bool:
            try:
                await self._client.v1.billing.meter_events.create_async(
                    params={
                        "event_name": event_name,
                        "identifier": identifier,
                        "timestamp": int(timestamp.timestamp()),
                        "payload": {"stripe_customer_id": customer, "value": str(value)},
                    }
                )
            except stripe.InvalidRequestError as exc:
                if "already exists" in str(exc.user_message or exc):
                    return False
                raise
            return True

        return await self._call("billing.meter_events.create", send)
