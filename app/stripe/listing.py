"""Paging through Stripe's lists, for `billing sync` and `billing reconcile`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from app.stripe.base import StripeBase, answered_at
from app.stripe.invoices import StripeInvoice
from app.stripe.payment_methods import StripeCard, card_of
from app.stripe.shapes import StripeCustomerObject
from app.stripe.subscriptions import StripeSubscriptionState

Listable = Literal["customers", "subscriptions", "invoices"]
StripeListed = StripeCustomerObject | StripeSubscriptionState | StripeInvoice
T = TypeVar("T")

PARSERS: dict[Listable, Callable[[dict[str, Any]], StripeListed]] = {
    "customers": StripeCustomerObject.from_payload,
    "subscriptions": StripeSubscriptionState.from_payload,
    "invoices": StripeInvoice.from_payload,
}


@dataclass(frozen=True, slots=True)
class StripePage(Generic[T]):
    """One page of a list, parsed; an invoice's `more_lines` says whether its lines are all here."""

    objects: list[T]
    has_more: bool
    # When Stripe answered, by its clock (`answered_at`): what the page's snapshots are as of.
    answered_at: int | None = None


class ListingCalls(StripeBase):
    async def list_page(
        self, resource: Listable, *, starting_after: str | None, limit: int = 100
    ) -> StripePage[StripeListed]:
        """One page of any of the lists `billing sync` walks alike."""
        return await self._list(resource, PARSERS[resource], starting_after, limit)

    async def list_subscriptions(
        self, *, starting_after: str | None, limit: int = 100
    ) -> StripePage[StripeSubscriptionState]:
        return await self._list("subscriptions", StripeSubscriptionState.from_payload, starting_after, limit)

    async def list_invoices(
        self, *, starting_after: str | None, limit: int = 100
    ) -> StripePage[StripeInvoice]:
        return await self._list("invoices", StripeInvoice.from_payload, starting_after, limit)

    async def _list(
        self, resource: Listable, parse: Callable[[dict[str, Any]], T], starting_after: str | None, limit: int
    ) -> StripePage[T]:
        """One page of a Stripe list, newest first; subscriptions of every status (a caller that
        wants only recent ones stops at the first older one)."""
        params: dict[str, Any] = {"limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        if resource == "subscriptions":
            params["status"] = "all"
        service = getattr(self._client.v1, resource)
        page = await self._call(f"{resource}.list", lambda: service.list_async(params=params))
        return StripePage(
            objects=[parse(obj.to_dict()) for obj in page.data],
            has_more=bool(page.has_more),
            answered_at=answered_at(page),
        )

    async def list_customer_cards(self, customer_id: str) -> list[StripeCard]:
        """The cards attached to a customer at Stripe (a customer has few: one page)."""
        page = await self._call(
            "payment_methods.list",
            lambda: self._client.v1.payment_methods.list_async(
                params={"customer": customer_id, "type": "card", "limit": 100}
            ),
        )
        return [card_of(pm) for pm in page.data]
