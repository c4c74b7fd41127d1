"""usage_period_settlements: the periods whose usage the usage job's period-close pass settled

A renewal draft (invoice.created) needs to know whether every window billed in its period is
recorded and sent. The period-close pass settles that for whole batches of subscriptions at once
and records each settled period's calls here; the draft reads the row joined to the subscription
it loads anyway, instead of probing the windows itself. No foreign key to subscriptions: its
check would lock every settled subscription's row (subscriptions are never deleted).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_period_settlements",
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("covered_through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_usage_period_settlements_period_ordered")
        ),
        sa.PrimaryKeyConstraint(
            "subscription_id", "period_start", "period_end", name=op.f("pk_usage_period_settlements")
        ),
    )


def downgrade() -> None:
    op.drop_table("usage_period_settlements")
