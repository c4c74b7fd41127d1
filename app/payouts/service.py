"""The payout run: release matured earnings, claim them into payouts, transfer each payout once.

Claiming and transferring are separate transactions. A payout and the ledger lines it pays are
committed before Stripe is called, and the transfer's idempotency key names the creator, the
currency and the period, so a job that dies after Stripe answered and is retried sends the same
request with the same key and Stripe returns the transfer it already made.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.config import Settings
from app.errors import DomainError
from app.models import Earning, Payout
from app.models.earning import NEGATIVE_KINDS_SQL
from app.stripe import StripeGateway

SIGNED_NET = f"CASE WHEN e.kind IN {NEGATIVE_KINDS_SQL} THEN -e.net_amount ELSE e.net_amount END"

RELEASE_SQL = text(
    "UPDATE earnings SET status = 'available' WHERE status = 'pending' AND earned_at < :matured_before"
)

# One payout per (creator, currency) with a positive available balance and a Connect account that
# can receive it; creators without one keep accruing.
CREATE_PAYOUTS_SQL = text(
    f"""
    INSERT INTO payouts (id, creator_id, stripe_account_id, currency, period, amount, status, attempts,
                         created_at)
    SELECT gen_random_uuid(), e.creator_id, a.stripe_account_id, e.currency, :period, 0, 'pending', 0, now()
    FROM earnings e
    JOIN creator_accounts a ON a.creator_id = e.creator_id AND a.payouts_enabled
    WHERE e.status = 'available' AND e.payout_id IS NULL
    GROUP BY e.creator_id, a.stripe_account_id, e.currency
    HAVING SUM({SIGNED_NET}) > 0
    ON CONFLICT (creator_id, currency, period) DO NOTHING
    RETURNING id
    """  # noqa: S608  (constant SQL)
)

CLAIM_SQL = text(
    """
    UPDATE earnings e SET payout_id = p.id
    FROM payouts p
    WHERE p.id = ANY(:ids) AND e.creator_id = p.creator_id AND e.currency = p.currency
      AND e.status = 'available' AND e.payout_id IS NULL
    """
)

AMOUNTS_SQL = text(
    f"""
    UPDATE payouts p SET amount = claimed.total
    FROM (SELECT e.payout_id, SUM({SIGNED_NET}) AS total FROM earnings e
          WHERE e.payout_id = ANY(:ids) GROUP BY e.payout_id) claimed
    WHERE p.id = claimed.payout_id
    """  # noqa: S608  (constant SQL)
)

# Reversals claimed between the balance check and the claim can leave nothing to pay: undo those.
UNCLAIM_EMPTY_SQL = text(
    "UPDATE earnings SET payout_id = NULL WHERE payout_id IN "
    "(SELECT id FROM payouts WHERE id = ANY(:ids) AND amount <= 0)"
)
DELETE_EMPTY_SQL = text("DELETE FROM payouts WHERE id = ANY(:ids) AND amount <= 0")


@dataclass(frozen=True, slots=True)
class PayoutRun:
    released: int
    created: int
    paid: int
    failed: int


def transfer_idempotency_key(payout: Payout) -> str:
    return f"payout:{payout.creator_id}:{payout.currency}:{payout.period}"


class PayoutService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway, settings: Settings) -> None:
        self._session = session
        self._stripe = stripe
        self._settings = settings

    async def prepare(self, period: str, now: datetime) -> tuple[int, int]:
        """Release earnings past the refund window and claim them into this period's payouts."""
        window = timedelta(days=self._settings.payout_refund_window_days)
        released = await self._session.execute(RELEASE_SQL, {"matured_before": now - window})
        ids = list((await self._session.execute(CREATE_PAYOUTS_SQL, {"period": period})).scalars())
        created = len(ids)
        if ids:
            await self._session.execute(CLAIM_SQL, {"ids": ids})
            await self._session.execute(AMOUNTS_SQL, {"ids": ids})
            await self._session.execute(UNCLAIM_EMPTY_SQL, {"ids": ids})
            deleted = await self._session.execute(DELETE_EMPTY_SQL, {"ids": ids})
            created -= int(getattr(deleted, "rowcount", 0) or 0)
        return int(getattr(released, "rowcount", 0) or 0), created

    async def pending_payout_ids(self) -> list[uuid.UUID]:
        statement = select(Payout.id).where(Payout.status == "pending").order_by(Payout.created_at)
        return list((await self._session.execute(statement)).scalars())

    async def transfer(self, payout_id: uuid.UUID) -> bool:
        """Transfer one pending payout and mark its ledger lines paid out; False if it is not due."""
        statement = (
            select(Payout)
            .where(Payout.id == payout_id, Payout.status == "pending")
            .with_for_update(skip_locked=True)
        )
        payout = (await self._session.execute(statement)).scalar_one_or_none()
        if payout is None:
            return False
        transfer = await self._stripe.create_transfer(
            amount=payout.amount,
            currency=payout.currency,
            destination=payout.stripe_account_id,
            transfer_group=f"payout-{payout.id}",
            metadata={"payout_id": str(payout.id), "creator_id": payout.creator_id, "period": payout.period},
            idempotency_key=transfer_idempotency_key(payout),
        )
        payout.status = "paid"
        payout.stripe_transfer_id = transfer.id
        payout.paid_at = clock.now()
        payout.attempts += 1
        payout.last_error = None
        await self._session.execute(
            update(Earning)
            .where(Earning.payout_id == payout.id)
            .values(status="paid_out", stripe_transfer_id=transfer.id)
        )
        return True

    async def record_failure(self, payout_id: uuid.UUID, error: DomainError) -> None:
        payout = await self._session.get(Payout, payout_id)
        if payout is not None:
            payout.attempts += 1
            payout.last_error = f"{error.code}: {error.message}"[:2000]
