"""StripeGateway: one async client, typed results, idempotency keys on every write."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import stripe

from app import metrics
from app.config import Settings
from app.errors import DomainError, PaymentRequired, ServiceUnavailable, Unprocessable, UpstreamError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StripeCustomer:
    id: str
    email: str | None


@dataclass(frozen=True, slots=True)
class StripePrice:
    id: str
    product: str
    currency: str
    unit_amount_decimal: Decimal | None
    meter: str | None


def _translate(exc: stripe.StripeError) -> DomainError:
    """Map a Stripe error onto ours; Stripe's user-facing message is kept, nothing internal."""
    message = exc.user_message or getattr(exc, "_message", None) or "Stripe refused the request"
    if isinstance(exc, stripe.CardError):
        return PaymentRequired(message, code=exc.code or "card_declined")
    if isinstance(exc, stripe.RateLimitError):
        return ServiceUnavailable("Stripe is busy, try again shortly", code="stripe_rate_limited")
    if isinstance(exc, stripe.InvalidRequestError):
        return Unprocessable(message, code=exc.code or "stripe_invalid_request")
    if isinstance(exc, stripe.APIConnectionError):
        return UpstreamError("Stripe could not be reached", code="stripe_unreachable")
    return UpstreamError("Stripe failed to answer", code="stripe_error")


class StripeGateway:
    """Thin async wrapper over `stripe.StripeClient`; callers never see the SDK or its errors."""

    def __init__(self, settings: Settings, http_client: stripe.HTTPClient | None = None) -> None:
        base = settings.stripe_api_base
        addresses: dict[str, str] = (
            {"api": base, "connect": base, "files": base, "meter_events": base} if base else {}
        )
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            stripe_version=settings.stripe_api_version,
            base_addresses=addresses,  # type: ignore[arg-type]
            max_network_retries=settings.stripe_max_network_retries,
            http_client=http_client or stripe.HTTPXClient(timeout=20),
        )

    @property
    def client(self) -> stripe.StripeClient:
        return self._client

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call()
        except stripe.StripeError as exc:
            outcome = type(exc).__name__
            log.warning(
                "stripe call failed",
                extra={
                    "operation": operation,
                    "stripe_error": outcome,
                    "stripe_code": exc.code,
                    "stripe_request_id": exc.request_id,
                },
            )
            raise _translate(exc) from None
        finally:
            metrics.STRIPE_CALLS.labels(operation, outcome).observe(time.perf_counter() - started)

    async def create_customer(
        self, *, email: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> StripeCustomer:
        params: dict[str, Any] = {"metadata": metadata}
        if email:
            params["email"] = email
        customer = await self._call(
            "customers.create",
            lambda: self._client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripeCustomer(id=customer.id, email=customer.email)

    async def retrieve_customer(self, customer_id: str) -> StripeCustomer:
        customer = await self._call(
            "customers.retrieve", lambda: self._client.v1.customers.retrieve_async(customer_id)
        )
        return StripeCustomer(id=customer.id, email=customer.email)

    async def create_product(self, *, name: str, metadata: dict[str, str], idempotency_key: str) -> str:
        product = await self._call(
            "products.create",
            lambda: self._client.v1.products.create_async(
                params={"name": name, "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return product.id

    async def create_meter(self, *, display_name: str, event_name: str, idempotency_key: str) -> str:
        """A Billing Meter summing `value` per customer; pay-per-use prices bill from it."""
        meter = await self._call(
            "billing.meters.create",
            lambda: self._client.v1.billing.meters.create_async(
                params={
                    "display_name": display_name,
                    "event_name": event_name,
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                    "value_settings": {"event_payload_key": "value"},
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return meter.id

    async def create_price(
        self,
        *,
        product: str,
        currency: str,
        unit_amount_decimal: Decimal,
        nickname: str,
        metadata: dict[str, str],
        idempotency_key: str,
        meter: str | None = None,
    ) -> StripePrice:
        """A monthly recurring price; with `meter`, a metered per-unit price billed from that meter."""
        recurring: dict[str, Any] = {"interval": "month"}
        if meter is not None:
            recurring.update(usage_type="metered", meter=meter)
        price = await self._call(
            "prices.create",
            lambda: self._client.v1.prices.create_async(
                params={
                    "product": product,
                    "currency": currency,
                    "unit_amount_decimal": unit_amount_decimal,
                    "recurring": recurring,  # type: ignore[typeddict-item]
                    "nickname": nickname,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripePrice(
            id=price.id,
            product=price.product if isinstance(price.product, str) else price.product.id,
            currency=price.currency,
            unit_amount_decimal=price.unit_amount_decimal,
            meter=meter,
        )

    async def deactivate_price(self, price_id: str) -> None:
        await self._call(
            "prices.update",
            lambda: self._client.v1.prices.update_async(price_id, params={"active": False}),
        )
