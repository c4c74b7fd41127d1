"""What a paid invoice collected, and how much of it its creators earn: the one rule.

Stripe's numbers (integer minor units):
- `total` is the lines after discounts plus tax; it is negative on a credit invoice (a downgrade
  whose proration credit is larger than the new charge), whose credit goes to the customer's
  invoice balance and pays later invoices.
- the customer balance is negative when it is a credit. `starting_balance` is the balance the
  invoice started from, `ending_balance` what is left once it was applied (null until finalised).
- `amount_paid` is what the payment collected; it may include older debt carried in the balance.

Collected toward an invoice = its payment + the credit it used from the balance - the older debt
its payment settled, at most its total and never below 0 (so a credit invoice collects nothing).

The creators' lines are netted per API first (credit and charge lines of the same API cancel
out). An API with a net credit takes that credit back in full from what its creator earned
before: the credit returns to the consumer (on this invoice or in their balance, from which it
is collected again when it pays a later invoice), so booking it twice is impossible. The APIs
with a net charge share what settled the invoice's charges (the money collected plus the
credits of this invoice) pro rata to their net over the charges' part of the invoice (tax and
other lines excluded), rounded down to the minor unit, never more than their net.

Hence on every invoice: charges booked - credits booked <= collected, and over a consumer's
invoices the earnings never exceed the money the consumer paid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from app.models import Invoice

K = TypeVar("K", bound=Hashable)


def amount_collected(
    *, total: int, amount_paid: int, starting_balance: int | None, ending_balance: int | None
) -> int:
    """What the consumer paid toward an invoice of `total`, from their card and their credit."""
    if total <= 0:
        return 0
    start = starting_balance or 0
    end = start if ending_balance is None else ending_balance
    credit_used = max(0, min(end, 0) - min(start, 0))
    debt_settled = max(0, max(start, 0) - max(end, 0))
    return max(0, min(total, amount_paid + credit_used - debt_settled))


def invoice_collected(invoice: Invoice) -> int:
    """`amount_collected` of our mirror of a Stripe invoice."""
    return amount_collected(
        total=invoice.total,
        amount_paid=invoice.amount_paid,
        starting_balance=invoice.starting_balance,
        ending_balance=invoice.ending_balance,
    )


@dataclass(frozen=True, slots=True)
class CreatorAmounts(Generic[K]):
    """Per API (or any key): what its creator earns on the invoice, and what it takes back."""

    charges: dict[K, int]
    credits: dict[K, int]


def creator_amounts(nets: Mapping[K, int], *, total: int, collected: int) -> CreatorAmounts[K]:
    """Split an invoice between its APIs' creators from their net lines (pre-tax, after discounts).

    `total` is the invoice's total and `collected` what it collected (`amount_collected`).
    """
    charged = {key: net for key, net in nets.items() if net > 0}
    credits = {key: -net for key, net in nets.items() if net < 0}
    positive = sum(charged.values())
    if positive == 0:
        return CreatorAmounts({}, credits)
    credited = sum(credits.values())
    # What the invoice bills besides the creators' lines (tax, lines of no plan); a negative part
    # (a discount of no plan) never raises the creators' share.
    others = total - (positive - credited)
    basis = positive + max(others, 0)
    settled = Decimal(max(collected, 0) + credited) * positive / basis
    pool = min(positive, int(settled.to_integral_value(ROUND_FLOOR)))
    keys = list(charged)
    shares = proportional_shares(pool, [charged[key] for key in keys])
    return CreatorAmounts({key: share for key, share in zip(keys, shares, strict=True) if share}, credits)


def proportional_shares(amount: int, weights: list[int]) -> list[int]:
    """`amount` split in proportion to `weights`, in whole minor units summing exactly to `amount`
    (largest remainders get the leftover units, earlier lines first on ties)."""
    total = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    exact = [Decimal(amount) * w / total for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: amount - sum(shares)]:
        shares[i] += 1
    return shares
