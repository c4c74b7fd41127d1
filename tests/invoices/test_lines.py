"""The stored shape of an invoice line reads back as it was written."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from app.invoices.lines import InvoiceLine, parse_line, stored_line
from app.stripe.invoices import StripeInvoiceLine

# Hypothesis takes naive bounds and attaches the time zone itself.
moments = st.none() | st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001
    max_value=datetime(2040, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
units = st.none() | st.decimals(min_value=0, max_value=10**7, places=6, allow_nan=False)


@given(
    description=st.none() | st.text(max_size=40),
    plan_id=st.none() | st.uuids().map(str),
    start=moments,
    end=moments,
    quantity=st.integers(min_value=1, max_value=10**9),
    unit=units,
    amount=st.integers(min_value=-(10**9), max_value=10**9),
    tax=st.integers(min_value=0, max_value=10**7),
    currency=st.sampled_from(["usd", "eur", "jpy"]),
)
def test_a_stored_line_reads_back_as_the_stripe_line_it_was_written_from(
    description: str | None,
    plan_id: str | None,
    start: datetime | None,
    end: datetime | None,
    quantity: int,
    unit: Decimal | None,
    amount: int,
    tax: int,
    currency: str,
) -> None:
    line = StripeInvoiceLine(
        description=description,
        quantity=quantity,
        unit_amount_decimal=unit,
        amount=amount,
        tax=tax,
        currency=currency,
        period_start=start,
        period_end=end,
        metadata={"plan_id": plan_id} if plan_id else {},
    )

    read = parse_line(stored_line(line, plan_name="Pro"), "usd")

    assert read == InvoiceLine(description, plan_id, "Pro", start, end, quantity, unit, amount, tax, currency)
