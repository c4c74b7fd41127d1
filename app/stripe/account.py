"""Stripe reachability, for `billing doctor`."""

from __future__ import annotations

from app.stripe.base import StripeBase


class AccountCalls(StripeBase):
    async def check_reachable(self) -> None:
        """The cheapest authenticated read (one customer at most); raises a DomainError when it fails."""
        await self._call("customers.list", lambda: self._client.v1.customers.list_async(params={"limit": 1}))
