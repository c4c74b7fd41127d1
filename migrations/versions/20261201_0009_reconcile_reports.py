"""reconcile reports: runs, their drift lines, the Stripe objects a run has listed

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-01 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconcile_runs",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period", sa.String(length=16), nullable=True),
        sa.Column("cursor", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("checked", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'interrupted', 'completed')", name=op.f("ck_reconcile_runs_status_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
        sa.UniqueConstraint("period", name=op.f("uq_reconcile_runs_period")),
    )
    op.create_table(
        "reconcile_drifts",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("check_name", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("ours", sa.BigInteger(), nullable=True),
        sa.Column("stripe", sa.BigInteger(), nullable=True),
        sa.Column("drift_cents", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "check_name IN ('invoices', 'earnings', 'usage', 'orphans')",
            name=op.f("ck_reconcile_drifts_check_name_valid"),
        ),
        sa.CheckConstraint("drift_cents >= 0", name=op.f("ck_reconcile_drifts_drift_cents_non_negative")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconcile_runs.id"],
            name=op.f("fk_reconcile_drifts_run_id_reconcile_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_drifts")),
        sa.UniqueConstraint("run_id", "check_name", "subject", name="uq_reconcile_drifts_run_check_subject"),
    )
    op.create_table(
        "reconcile_seen",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconcile_runs.id"],
            name=op.f("fk_reconcile_seen_run_id_reconcile_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "kind", "stripe_id", name=op.f("pk_reconcile_seen")),
    )


def downgrade() -> None:
    op.drop_table("reconcile_seen")
    op.drop_table("reconcile_drifts")
    op.drop_table("reconcile_runs")
