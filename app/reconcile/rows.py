"""The shapes the reconcile repository reads and records, which the rules compare."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between our store and Stripe."""

    check: str
    subject: str
    detail: str
    currency: str | None = None
    ours: int | None = None
    stripe: int | None = None
    cents: int = 0


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    """What the invoice check reads of our mirror of one Stripe invoice."""

    id: uuid.UUID
    status: str
    currency: str
    total: int
    amount_paid: int
    subscription_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class PlanCatalog:
    """Our side of the mapping from Stripe's invoice lines to creators: the plan of each Stripe
    price, the plan of each Stripe subscription we have a row for, and each plan's
    (api_id, creator_id)."""

    plan_of_price: Mapping[str, uuid.UUID]
    plan_of_subscription: Mapping[str, uuid.UUID]
    owners: Mapping[uuid.UUID, tuple[str, str]]
