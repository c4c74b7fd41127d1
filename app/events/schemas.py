"""JSON schemas of the marketplace events' `data`, one model per event type.

`docs/events.md` is rendered from these models (`python -m app.events.schemas > docs/events.md`);
a test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.events import types


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class SubscriptionData(_Data):
    subscription_id: str = Field(description="Our subscription id (UUID)")
    consumer_id: str = Field(description="The subscribing consumer (UUID)")
    api_id: str = Field(description="The subscribed marketplace API")
    status: Literal["active", "cancelled", "past_due", "trial", "incomplete", "incomplete_expired"] = Field(
        description="The subscription's status when the event was written"
    )
    pricing_plan_id: str = Field(description="The plan subscribed to (UUID)")
    plan_version: int = Field(description="The plan version the subscriber holds")
    current_period_start: str | None = Field(description="Start of the billing period, ISO 8601 UTC")
    current_period_end: str | None = Field(description="End of the billing period, ISO 8601 UTC")
    cancel_at_period_end: bool = Field(description="True when it ends at `current_period_end`")


class TrialEndingData(SubscriptionData):
    trial_end: str | None = Field(description="When the trial ends, ISO 8601 UTC")


class InvoiceData(SubscriptionData):
    invoice_id: str = Field(description="Our invoice id (UUID)")
    stripe_invoice_id: str = Field(description="The Stripe invoice (`in_...`)")
    number: str | None = Field(
        description="Stripe's invoice number, else ours once finalised; null on a draft"
    )
    invoice_status: Literal["draft", "open", "paid", "uncollectible", "void"] = Field(
        description="The invoice's status when the event was written"
    )
    amount_due: int = Field(description="Integer minor units of `currency` (cents for usd)")
    amount_paid: int = Field(description="Integer minor units of `currency` (cents for usd)")
    currency: str = Field(description="Lowercase ISO 4217 currency")


class QuotaOverrunData(SubscriptionData):
    period_start: str = Field(description="Start of the period overrun, ISO 8601 UTC")
    period_end: str = Field(description="End of the period overrun, ISO 8601 UTC")
    recorded_calls: int = Field(description="Calls metering recorded in the period so far (count)")
    call_limit: int = Field(description="Calls included per period (count)")


class UsageThresholdData(_Data):
    api_id: str = Field(description="The subscribed marketplace API")
    consumer_id: str = Field(description="The subscribing consumer (UUID)")
    basis: Literal["included_calls", "spend_cap"] = Field(
        description="Share of the plan's included calls, or of the calls the spend cap allows"
    )
    threshold_percent: Literal[80, 100] = Field(description="The share of `limit` reached, in percent")
    limit: int = Field(description="The included calls, or the calls the spend cap allows (count)")
    used: int = Field(description="Calls counted in the period when the threshold was crossed (count)")
    period_start: str = Field(description="Start of the billing period, ISO 8601 UTC")
    period_end: str = Field(description="End of the billing period, ISO 8601 UTC")


class QuotaExhaustedData(_Data):
    api_id: str = Field(description="The subscribed marketplace API")
    consumer_id: str = Field(description="The subscribing consumer (UUID)")
    call_limit: int = Field(description="Calls included per period, a hard limit (count)")
    used: int = Field(description="Calls counted in the period when the first call was refused (count)")
    period_start: str = Field(description="Start of the billing period, ISO 8601 UTC")
    period_end: str = Field(description="End of the billing period, ISO 8601 UTC")


EVENT_SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    types.SUBSCRIPTION_CREATED: (
        SubscriptionData,
        "A subscription became live (active or trial) for the first time.",
    ),
    types.SUBSCRIPTION_CHANGED: (SubscriptionData, "Plan change, or a status change between live statuses."),
    types.SUBSCRIPTION_CANCELLED: (
        SubscriptionData,
        "The subscription ended (cancelled or incomplete_expired).",
    ),
    types.SUBSCRIPTION_TRIAL_ENDING: (TrialEndingData, "Stripe reports the trial ends in three days."),
    types.API_KEY_SUSPENDED: (SubscriptionData, "Dunning: the key is suspended after the grace period."),
    types.API_KEY_RESTORED: (SubscriptionData, "A payment ended dunning: the key works again (a new key)."),
    types.INVOICE_PAID: (InvoiceData, "An invoice of the subscription was paid (once per invoice)."),
    types.INVOICE_PAYMENT_FAILED: (InvoiceData, "A payment attempt failed (once per Stripe event)."),
    types.USAGE_THRESHOLD_REACHED: (
        UsageThresholdData,
        "Usage reached 80% or 100% of the included calls or of the spend cap: once per period each.",
    ),
    types.QUOTA_EXHAUSTED: (QuotaExhaustedData, "The first call refused for the call limit in a period."),
    types.USAGE_QUOTA_OVERRUN: (
        QuotaOverrunData,
        "The usage worker found recorded calls past the call limit (once per period).",
    ),
}

ENVELOPE = """\
# Marketplace events

Billing tells the marketplace what happened as signed webhooks. Every configured endpoint
(`MARKETPLACE_WEBHOOK_URLS`, comma separated) receives each event as a `POST` with a JSON body:

```json
{"id": "<event uuid>", "type": "<type>", "created_at": "<ISO 8601 UTC>",
 "subscription_id": "<uuid or null>", "sequence": 123, "data": {...}}
```

- **Signature**: header `Marketplace-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`, each
  `v1` the HMAC-SHA256 of `<t>.<raw body>` with one of `MARKETPLACE_WEBHOOK_SECRETS` (every
  secret signs while they rotate: add the new one first, move receivers over, then drop the old).
  Compare in constant time and refuse a `t` more than 5 minutes from your clock.
  `app/events/signature.py: verify` is the reference.
- **Delivery**: any 2xx is success. Otherwise retried with exponential backoff (10 s, 20 s, 40 s
  ... up to an hour, with jitter) up to `MARKETPLACE_WEBHOOK_MAX_ATTEMPTS` (10), then `failed`.
  An endpoint that took an event is not sent it again in that round. Each attempt is logged in
  `marketplace_event_deliveries`.
- **Order**: events of one subscription are delivered in the order written (`sequence` grows);
  a later event waits while an earlier one is being retried.
- **At least once**: deduplicate on `id`. `billing events replay --event ID | --failed |
  --since T` sends events again to every endpoint.
- Headers `Marketplace-Event-Id` and `Marketplace-Event-Type` repeat `id` and `type`.

## Event types

Each `data` schema below is JSON Schema (draft 2020-12); more fields may be added later.
"""


def render_docs() -> str:
    parts = [ENVELOPE]
    for event_type, (model, summary) in EVENT_SCHEMAS.items():
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        parts.append(f"\n### `{event_type}`\n\n{summary}\n\n```json\n{schema}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_docs())
