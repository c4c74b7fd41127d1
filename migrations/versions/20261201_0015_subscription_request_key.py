"""The request that made a subscription: a digest of its caller's Idempotency-Key

A subscribe whose commit went through but whose answer was lost (the database's reply to our
COMMIT never arrived) is retried with the same key; the digest lets that retry find the
subscription it made and answer it, where any other subscribe to the API is 409.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 14:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("request_key_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("subscriptions", "request_key_digest")
