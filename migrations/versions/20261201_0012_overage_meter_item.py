"""Overage billed through the API's meter: the version's metered overage price, the item it is on

A plan version with included calls and an overage price gets a second Stripe price: a graduated
metered price on the API's meter (the included calls at 0, then the overage price per call). A
subscription on such a version carries it as a second subscription item.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_pricing_plan_versions",
        sa.Column("stripe_overage_price_id", sa.String(length=255), nullable=True),
    )
    op.create_unique_constraint(
        op.f("uq_api_pricing_plan_versions_stripe_overage_price_id"),
        "api_pricing_plan_versions",
        ["stripe_overage_price_id"],
    )
    op.add_column("subscriptions", sa.Column("stripe_overage_item_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    op.drop_column("subscriptions", "stripe_overage_item_id")
    op.drop_constraint(
        op.f("uq_api_pricing_plan_versions_stripe_overage_price_id"),
        "api_pricing_plan_versions",
        type_="unique",
    )
    op.drop_column("api_pricing_plan_versions", "stripe_overage_price_id")
