"""The earnings rule on its own (`app.earnings.collected`): Stripe's balance arithmetic, and the
invariant over random invoices that creators never earn more than an invoice collected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.earnings.collected import amount_collected, creator_amounts
from tests.support.earnings import apply_balance


@given(
    nets=st.lists(st.integers(min_value=-100_000, max_value=100_000), min_size=1, max_size=6),
    others=st.integers(min_value=-5_000, max_value=20_000),
    starting_balance=st.integers(min_value=-50_000, max_value=5_000),
    shortfall=st.integers(min_value=0, max_value=50_000),
)
def test_creator_amounts_never_exceed_what_the_invoice_collected(
    nets: list[int], others: int, starting_balance: int, shortfall: int
) -> None:
    total = sum(nets) + others
    due, ending_balance = apply_balance(total, starting_balance)
    amount_paid = max(0, due - shortfall)
    collected = amount_collected(
        total=total, amount_paid=amount_paid, starting_balance=starting_balance, ending_balance=ending_balance
    )
    amounts = creator_amounts(dict(enumerate(nets)), total=total, collected=collected)

    assert 0 <= collected <= max(total, 0)
    assert sum(amounts.charges.values()) - sum(amounts.credits.values()) <= collected
    for key, net in enumerate(nets):
        assert 0 <= amounts.charges.get(key, 0) <= max(net, 0)
        assert amounts.credits.get(key, 0) == max(-net, 0)
    if shortfall == 0 and others >= 0 and starting_balance <= 0 and total > 0:
        # Fully paid (card and credit): every API earns exactly its net lines.
        assert amounts.charges == {key: net for key, net in enumerate(nets) if net > 0}


def test_amount_collected_reads_stripes_balance_arithmetic() -> None:
    # Card only; card after a 300 credit; all from a credit; a credit invoice; older debt settled.
    assert amount_collected(total=1000, amount_paid=1000, starting_balance=0, ending_balance=0) == 1000
    assert amount_collected(total=1000, amount_paid=700, starting_balance=-300, ending_balance=0) == 1000
    assert amount_collected(total=300, amount_paid=0, starting_balance=-500, ending_balance=-200) == 300
    assert amount_collected(total=-200, amount_paid=0, starting_balance=0, ending_balance=-200) == 0
    assert amount_collected(total=1000, amount_paid=1200, starting_balance=200, ending_balance=0) == 1000
    # Below Stripe's minimum charge: marked paid, carried as debt, nothing collected yet.
    assert amount_collected(total=30, amount_paid=0, starting_balance=0, ending_balance=30) == 0
    # Not finalised yet (no ending balance): the payment alone.
    assert amount_collected(total=500, amount_paid=500, starting_balance=None, ending_balance=None) == 500
