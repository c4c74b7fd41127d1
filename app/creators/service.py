from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal
from app.creators.schemas import ConnectAccountOut, ConnectOnboardingIn, ConnectOnboardingOut
from app.models import CreatorAccount
from app.stripe import StripeGateway
from app.stripe.connect import StripeAccount


def account_out(account: CreatorAccount | None) -> ConnectAccountOut:
    if account is None:
        return ConnectAccountOut(
            stripe_account_id=None,
            status="not_started",
            details_submitted=False,
            charges_enabled=False,
            payouts_enabled=False,
        )
    return ConnectAccountOut(
        stripe_account_id=account.stripe_account_id,
        status="active" if account.payouts_enabled else "onboarding",
        details_submitted=account.details_submitted,
        charges_enabled=account.charges_enabled,
        payouts_enabled=account.payouts_enabled,
    )


def apply_account_state(account: CreatorAccount, state: StripeAccount) -> None:
    account.details_submitted = state.details_submitted
    account.charges_enabled = state.charges_enabled
    account.payouts_enabled = state.payouts_enabled


class ConnectService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway) -> None:
        self._session = session
        self._stripe = stripe

    async def start_onboarding(self, principal: Principal, data: ConnectOnboardingIn) -> ConnectOnboardingOut:
        """The creator's Express account (created once) and a fresh onboarding link for it."""
        account = await self._get(principal.user_id)
        if account is None:
            # Keyed by the creator, so concurrent or retried requests make one Stripe account.
            state = await self._stripe.create_express_account(
                email=principal.email,
                metadata={"creator_id": principal.user_id},
                idempotency_key=f"connect-account:{principal.user_id}",
            )
            await self._session.execute(
                insert(CreatorAccount)
                .values(
                    creator_id=principal.user_id,
                    stripe_account_id=state.id,
                    email=principal.email,
                    details_submitted=state.details_submitted,
                    charges_enabled=state.charges_enabled,
                    payouts_enabled=state.payouts_enabled,
                )
                .on_conflict_do_nothing()
            )
            account = await self._get(principal.user_id)
            assert account is not None  # noqa: S101  (inserted above or by the concurrent request)
        link = await self._stripe.create_account_link(
            account=account.stripe_account_id, refresh_url=data.refresh_url, return_url=data.return_url
        )
        return ConnectOnboardingOut(
            **account_out(account).model_dump(), url=link.url, expires_at=link.expires_at
        )

    async def status(self, principal: Principal) -> ConnectAccountOut:
        """The account's state, refreshed from Stripe until it can receive payouts."""
        account = await self._get(principal.user_id)
        if account is not None and not account.payouts_enabled:
            apply_account_state(account, await self._stripe.retrieve_account(account.stripe_account_id))
        return account_out(account)

    async def _get(self, creator_id: str) -> CreatorAccount | None:
        statement = select(CreatorAccount).where(CreatorAccount.creator_id == creator_id)
        return (await self._session.execute(statement)).scalar_one_or_none()
