"""invoice numbers of our own, bill-to, description and due date on invoices

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invoice_number_sequences",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", name=op.f("pk_invoice_number_sequences")),
    )
    op.add_column("invoices", sa.Column("customer_name", sa.String(length=255), nullable=True))
    op.add_column(
        "invoices", sa.Column("customer_address", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.add_column("invoices", sa.Column("description", sa.Text(), nullable=True))
    op.add_column("invoices", sa.Column("due_date", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("invoices", "due_date")
    op.drop_column("invoices", "description")
    op.drop_column("invoices", "customer_address")
    op.drop_column("invoices", "customer_name")
    op.drop_table("invoice_number_sequences")
