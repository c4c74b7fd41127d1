"""invoice credits: Stripe's negative totals, customer balances, creator credit lines

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 07:30:00

A credit (proration) invoice has a negative subtotal, tax and total in Stripe: the mirror stores
them as they are (`amount_due` and `amount_paid` stay non-negative, as in Stripe). The invoice
keeps the customer balance Stripe applied (`starting_balance`, `ending_balance`), which is part
of what was collected. An earnings line of kind `credit` takes back what an invoice's net credit
lines return to the consumer, once per (invoice, plan).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNED_INVOICE_AMOUNTS = ("subtotal", "tax", "total")


def upgrade() -> None:
    for column in SIGNED_INVOICE_AMOUNTS:
        op.drop_constraint(op.f(f"ck_invoices_{column}_non_negative"), "invoices", type_="check")
    op.add_column("invoices", sa.Column("starting_balance", sa.BigInteger(), nullable=True))
    op.add_column("invoices", sa.Column("ending_balance", sa.BigInteger(), nullable=True))
    op.drop_constraint(op.f("ck_earnings_kind_valid"), "earnings", type_="check")
    op.create_check_constraint(
        op.f("ck_earnings_kind_valid"),
        "earnings",
        "kind IN ('charge', 'reversal', 'reinstatement', 'credit')",
    )
    op.create_index(
        "uq_earnings_credit_invoice_plan",
        "earnings",
        ["invoice_id", "plan_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'credit'"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_earnings_credit_invoice_plan", table_name="earnings", postgresql_where=sa.text("kind = 'credit'")
    )
    op.execute("DELETE FROM earnings WHERE kind = 'credit'")
    op.drop_constraint(op.f("ck_earnings_kind_valid"), "earnings", type_="check")
    op.create_check_constraint(
        op.f("ck_earnings_kind_valid"), "earnings", "kind IN ('charge', 'reversal', 'reinstatement')"
    )
    op.drop_column("invoices", "ending_balance")
    op.drop_column("invoices", "starting_balance")
    for column in SIGNED_INVOICE_AMOUNTS:
        # Credit invoices cannot meet the old rule: keep them as zero, as the old mirror did.
        op.execute(f"UPDATE invoices SET {column} = 0 WHERE {column} < 0")  # noqa: S608  (constant names)
        op.create_check_constraint(op.f(f"ck_invoices_{column}_non_negative"), "invoices", f"{column} >= 0")
