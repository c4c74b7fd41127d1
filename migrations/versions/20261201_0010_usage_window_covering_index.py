"""usage windows: the (subscription, window start) key carries the sums' columns

A period's sum (the usage endpoint, the usage worker's quota check, reconcile) reads a
subscription's windows of one period by this key. With the period bounds (window_end) and the
counts in the index, the sum is an index-only scan of one leaf page or two, instead of a heap page
for each window: on a large table the cost stays that of the period, not of the table. The
index is built beside the old one without blocking writes, then takes over the constraint's name.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "uq_usage_records_subscription_window"


def _replace_key(include: str) -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}_new")
        op.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY {NAME}_new "
            f"ON usage_records (subscription_id, window_start){include}"
        )
    op.execute(
        f"ALTER TABLE usage_records DROP CONSTRAINT {NAME}, "
        f"ADD CONSTRAINT {NAME} UNIQUE USING INDEX {NAME}_new"
    )


def upgrade() -> None:
    _replace_key(" INCLUDE (window_end, quantity, successful_calls, failed_calls)")


def downgrade() -> None:
    _replace_key("")
