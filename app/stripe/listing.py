"""Paging through Stripe's lists, for `billing sync` and `billing reconcile`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.stripe.base import StripeBase
from app.stripe.payment_methods import StripeCard, card_of

Listable = Literal["customers", "subscriptions", "invoices"]


@dataclass(frozen=True, slots=True)
class StripePage:
    objects: list[dict[str, Any]]
    has_more: bool


class ListingCalls(StripeBase):
    async def list_page(
        self, resource: Listable, *, starting_after: str | None, limit: int = 100
    ) -> StripePage:
        """One page of a Stripe list as plain JSON objects (the shape webhooks deliver), newest
        first; subscriptions of every status (a caller that wants only recent ones stops at the
        first older one)."""
        params: dict[str, Any] = {"limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        if resource == "subscriptions":
            params["status"] = "all"
        service = getattr(self._client.v1, resource)
        page = await self._call(f"{resource}.list", lambda: service.list_async(params=params))
        return StripePage(objects=[obj.to_dict() for obj in page.data], has_more=bool(page.has_more))

    async def list_customer_cards(self, customer_id: str) -> list[StripeCard]:
        """The cards attached to a customer at Stripe (a customer has few: one page)."""
        page = await self._call(
            "payment_methods.list",
            lambda: self._client.v1.payment_methods.list_async(
                params={"customer": customer_id, "type": "card", "limit": 100}
            ),
        )
        return [card_of(pm) for pm in page.data]
