"""usage_records: a partial index of the windows not yet accepted by Stripe

Claiming a subscription's windows to send (the usage job's batches and each renewal draft's
`invoice.created`) read every window it ever had through the (subscription, window) index and
filtered them; almost all are sent. The partial index holds only those still to send.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_records_unsent",
        "usage_records",
        ["subscription_id", "window_start"],
        unique=False,
        postgresql_where=sa.text("meter_event_identifier IS NOT NULL AND reported_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_usage_records_unsent",
        table_name="usage_records",
        postgresql_where=sa.text("meter_event_identifier IS NOT NULL AND reported_at IS NULL"),
    )
