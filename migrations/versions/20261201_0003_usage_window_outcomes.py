"""Usage windows: 64-bit counts, and each window's outcome at Stripe.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("quantity", "successful_calls", "failed_calls")


def upgrade() -> None:
    for column in COUNTS:
        op.alter_column("usage_records", column, type_=sa.BigInteger(), existing_nullable=False)
    op.add_column(
        "usage_records",
        sa.Column("report_status", sa.String(length=16), server_default="unbilled", nullable=False),
    )
    op.add_column(
        "usage_records", sa.Column("report_attempt", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "usage_records", sa.Column("report_first_sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "usage_records", sa.Column("report_last_sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("usage_records", sa.Column("report_error", sa.Text(), nullable=True))
    op.add_column("usage_records", sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=True))
    # Windows not yet reported were possibly sent already (a batch failed after Stripe took
    # some): they count as first sent when written, so those Stripe may have forgotten by now
    # are quarantined for an operator rather than sent (and counted) again.
    op.execute(
        """
        UPDATE usage_records SET
            report_status = CASE
                WHEN meter_event_identifier IS NULL THEN 'unbilled'
                WHEN reported_at IS NOT NULL THEN 'accepted'
                ELSE 'pending' END,
            report_first_sent_at = CASE
                WHEN meter_event_identifier IS NOT NULL AND reported_at IS NULL THEN created_at END
        """
    )
    op.create_check_constraint(
        op.f("ck_usage_records_report_status_valid"),
        "usage_records",
        "report_status IN ('unbilled', 'pending', 'accepted', 'quarantined')",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_usage_records_report_status_valid"), "usage_records", type_="check")
    for column in (
        "quarantined_at",
        "report_error",
        "report_last_sent_at",
        "report_first_sent_at",
        "report_attempt",
        "report_status",
    ):
        op.drop_column("usage_records", column)
    for column in COUNTS:
        op.alter_column("usage_records", column, type_=sa.Integer(), existing_nullable=False)
