"""Reading Stripe back for `billing reconcile`: single invoices and meter summaries (pages of
invoices and subscriptions come from `ListingCalls`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import stripe

from app.stripe.base import StripeBase
from app.stripe.invoices import StripeInvoice


class ReconcileCalls(StripeBase):
    async def retrieve_invoice_or_none(self, invoice_id: str) -> StripeInvoice | None:
        """Stripe's invoice (its embedded lines; `with_all_lines` for the rest), or None if Stripe
        has no such invoice (404)."""

        async def retrieve() -> StripeInvoice | None:
            try:
                invoice = await self._client.v1.invoices.retrieve_async(invoice_id)
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:
                    return None
                raise
            return StripeInvoice.from_payload(invoice.to_dict())

        return await self._call("invoices.retrieve", retrieve)

    async def meter_usage(self, meter_id: str, *, customer: str, start: datetime, end: datetime) -> Decimal:
        """The customer's aggregated meter value from `start` (inclusive) to `end` (exclusive), both
        on minute boundaries as Stripe requires, from the meter's event summaries."""
        service = self._client.v1.billing.meters.event_summaries
        params: dict[str, Any] = {
            "customer": customer,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
            "limit": 100,
        }
        total = Decimal(0)
        while True:
            page = await self._call(
                "billing.meters.event_summaries.list",
                partial(service.list_async, meter_id, params=params),  # type: ignore[arg-type]
            )
            # `aggregated_value` is a JSON number; its text keeps the value exact.
            total += sum((Decimal(str(summary.aggregated_value)) for summary in page.data), Decimal(0))
            if not page.has_more or not page.data:
                return total
            params = {**params, "starting_after": page.data[-1].id}
