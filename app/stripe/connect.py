"""Stripe Connect: creators' Express accounts, onboarding links and transfers of their earnings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.stripe.base import StripeBase


@dataclass(frozen=True, slots=True)
class StripeAccount:
    id: str
    details_submitted: bool
    charges_enabled: bool
    payouts_enabled: bool

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> StripeAccount:
        return cls(
            id=obj["id"],
            details_submitted=bool(obj.get("details_submitted")),
            charges_enabled=bool(obj.get("charges_enabled")),
            payouts_enabled=bool(obj.get("payouts_enabled")),
        )


@dataclass(frozen=True, slots=True)
class StripeAccountLink:
    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StripeTransfer:
    id: str
    amount: int
    currency: str
    destination: str


class ConnectCalls(StripeBase):
    async def create_express_account(
        self, *, email: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> StripeAccount:
        """An Express account that can receive transfers; Stripe hosts its onboarding."""
        params: dict[str, Any] = {
            "type": "express",
            "capabilities": {"transfers": {"requested": True}},
            "metadata": metadata,
        }
        if email:
            params["email"] = email
        account = await self._call(
            "accounts.create",
            lambda: self._client.v1.accounts.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return StripeAccount.from_payload(account.to_dict())

    async def retrieve_account(self, account_id: str) -> StripeAccount:
        account = await self._call(
            "accounts.retrieve", lambda: self._client.v1.accounts.retrieve_async(account_id)
        )
        return StripeAccount.from_payload(account.to_dict())

    async def create_account_link(
        self, *, account: str, refresh_url: str, return_url: str
    ) -> StripeAccountLink:
        """A single-use onboarding link (it expires within minutes, so each request makes a new one)."""
        link = await self._call(
            "account_links.create",
            lambda: self._client.v1.account_links.create_async(
                params={
                    "account": account,
                    "refresh_url": refresh_url,
                    "return_url": return_url,
                    "type": "account_onboarding",
                }
            ),
        )
        return StripeAccountLink(url=link.url, expires_at=datetime.fromtimestamp(link.expires_at, tz=UTC))

    async def create_transfer(
        self,
        *,
        amount: int,
        currency: str,
        destination: str,
        transfer_group: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> StripeTransfer:
        transfer = await self._call(
            "transfers.create",
            lambda: self._client.v1.transfers.create_async(
                params={
                    "amount": amount,
                    "currency": currency,
                    "destination": destination,
                    "transfer_group": transfer_group,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        destination_id = transfer.destination if isinstance(transfer.destination, str) else destination
        return StripeTransfer(
            id=transfer.id, amount=transfer.amount, currency=transfer.currency, destination=destination_id
        )
