"""Paid Stripe invoices and the earnings ledger they book: invoice payloads with Stripe's balance
arithmetic, extra plans, and readers of the booked lines."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.models import Earning, Invoice, PricingPlan, PricingPlanVersion
from tests.support.billing_data import World, event
from tests.support.stripe_payments import T0, FakePayments
from tests.support.worker import Ctx, deliver

PERIOD = (T0, T0 + 30 * 86400)
SIGN = {"charge": 1, "reinstatement": 1, "reversal": -1, "credit": -1}


async def add_plan(
    engine: AsyncEngine, world: World, name: str, monthly_amount: int
) -> tuple[uuid.UUID, str]:
    """Another plan of the world's API, with its own Stripe price."""
    plan_id, price = uuid.uuid4(), f"price_{uuid.uuid4().hex[:10]}"
    async with AsyncSession(engine) as session, session.begin():
        session.add(PricingPlan(id=plan_id, api_id=world.api_id, name=name, type="subscription"))
        await session.flush()
        session.add(
            PricingPlanVersion(
                plan_id=plan_id,
                version=1,
                currency="usd",
                monthly_amount=monthly_amount,
                stripe_price_id=price,
            )
        )
    return plan_id, price


def apply_balance(total: int, starting_balance: int) -> tuple[int, int]:
    """Stripe at finalisation: (amount_due, ending_balance) of an invoice of `total` for a customer
    whose balance was `starting_balance` (negative: a credit, positive: a debt)."""
    if total <= 0:
        return 0, starting_balance + total  # nothing due; a credit invoice adds to the credit
    if starting_balance < 0:
        applied = min(-starting_balance, total)
        return total - applied, starting_balance + applied
    return total + starting_balance, 0  # the debt is charged with it


def paid_invoice(
    world: World,
    invoice_id: str,
    lines: list[tuple[int, str]],
    *,
    tax: int = 0,
    starting_balance: int = 0,
    amount_paid: int | None = None,
) -> dict[str, Any]:
    """A paid Stripe invoice of these (amount, price) lines, with Stripe's balance arithmetic: the
    balance (negative: a credit) applies to the total; a negative total adds to the credit."""
    subtotal = sum(amount for amount, _ in lines)
    total = subtotal + tax
    amount_due, ending_balance = apply_balance(total, starting_balance)
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": world.customer,
        "status": "paid",
        "number": f"INV-{invoice_id[-6:]}",
        "currency": "usd",
        "subtotal": subtotal,
        "total": total,
        "total_taxes": [{"amount": tax}] if tax else [],
        "starting_balance": starting_balance,
        "ending_balance": ending_balance,
        "amount_due": amount_due,
        "amount_paid": amount_due if amount_paid is None else amount_paid,
        "amount_remaining": 0,
        "period_start": PERIOD[0],
        "period_end": PERIOD[1],
        "status_transitions": {"paid_at": T0 + 5},
        "parent": {"subscription_details": {"subscription": world.stripe_subscription}},
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": f"il_{invoice_id}_{index}",
                    "amount": amount,
                    "currency": "usd",
                    "description": "Unused time" if amount < 0 else "Remaining time",
                    "quantity": 1,
                    "period": {"start": PERIOD[0], "end": PERIOD[1]},
                    "pricing": {"price_details": {"price": price}},
                    "parent": {
                        "subscription_item_details": {
                            "subscription": world.stripe_subscription,
                            "proration": True,
                        }
                    },
                }
                for index, (amount, price) in enumerate(lines)
            ],
        },
    }


async def booked(
    engine: AsyncEngine, invoice_id: str | None = None
) -> list[tuple[str, uuid.UUID, int, int, int]]:
    """(kind, plan, gross, commission, net) of the ledger lines, of one Stripe invoice or all."""
    statement = select(
        Earning.kind, Earning.plan_id, Earning.gross_amount, Earning.commission_amount, Earning.net_amount
    ).join(Invoice, Invoice.id == Earning.invoice_id)
    if invoice_id is not None:
        statement = statement.where(Invoice.stripe_invoice_id == invoice_id)
    async with engine.connect() as connection:
        return sorted((str(k), p, g, c, n) for k, p, g, c, n in (await connection.execute(statement)).all())


def signed_earned(lines: list[tuple[str, uuid.UUID, int, int, int]]) -> int:
    """What the creators keep in all (net + commission), reversals and credits subtracted."""
    return sum(SIGN[kind] * gross for kind, _, gross, _, _ in lines)


async def pay(
    client: httpx.AsyncClient, ctx: Ctx, fake: FakePayments, invoice: dict[str, Any], at: int
) -> None:
    fake.register(invoice)
    assert await deliver(client, ctx, event("invoice.paid", invoice, created=at)) == "processed"
