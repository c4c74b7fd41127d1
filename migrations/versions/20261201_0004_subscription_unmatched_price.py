"""subscriptions.unmatched_stripe_price_id: a Stripe price no plan of the API has

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "subscriptions", sa.Column("unmatched_stripe_price_id", sa.String(length=255), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("subscriptions", "unmatched_stripe_price_id")
