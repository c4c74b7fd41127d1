"""Stripe products, prices and Billing Meters: what a pricing plan is made of."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.stripe.base import StripeBase, decimal_param


@dataclass(frozen=True, slots=True)
class StripePrice:
    id: str
    product: str
    currency: str
    unit_amount_decimal: Decimal | None
    meter: str | None


class CatalogCalls(StripeBase):
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
        terms = {"unit_amount_decimal": decimal_param(unit_amount_decimal), "recurring": recurring}
        return await self._create_price(
            product, currency, terms, nickname, metadata, idempotency_key, meter=meter
        )

    async def create_overage_price(
        self,
        *,
        product: str,
        currency: str,
        meter: str,
        included: int,
        unit_amount_decimal: Decimal,
        nickname: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> StripePrice:
        """A monthly metered price on `meter` in graduated tiers: the first `included` units at 0,
        then `unit_amount_decimal` (minor units) per unit. Stripe bills a period's whole usage
        through the tiers, so only the units past `included` cost anything."""
        terms = {
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": included, "unit_amount_decimal": "0"},
                {"up_to": "inf", "unit_amount_decimal": decimal_param(unit_amount_decimal)},
            ],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
        }
        return await self._create_price(
            product, currency, terms, nickname, metadata, idempotency_key, meter=meter
        )

    async def _create_price(
        self,
        product: str,
        currency: str,
        terms: dict[str, Any],
        nickname: str,
        metadata: dict[str, str],
        idempotency_key: str,
        *,
        meter: str | None,
    ) -> StripePrice:
        """`POST /v1/prices` with the price's `terms` (amounts, recurring), tax-exclusive: any tax
        Stripe computes is added on top, so the price (what the creator earns on) never contains
        tax, whatever the account's default tax behavior."""
        params: dict[str, Any] = {
            "product": product,
            "currency": currency,
            **terms,
            "nickname": nickname,
            "metadata": metadata,
            "tax_behavior": "exclusive",
        }
        price = await self._call(
            "prices.create",
            lambda: self._client.v1.prices.create_async(
                params=params,  # type: ignore[arg-type]
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
