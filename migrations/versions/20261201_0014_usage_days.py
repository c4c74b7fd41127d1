"""usage_days: each subscription's windows summed per UTC day, kept by triggers on usage_records

The creator's usage report summed every window of the API's subscriptions in the range: at 10M
windows a parallel scan of the table, its cost growing faster than the rows. It reads these
daily sums instead (one row per subscription and day, whatever the windows' size).

Statement-level triggers with transition tables keep them for every writer (the usage job, the
backfill, fixes by hand) in the writer's own transaction: one grouped upsert per statement, not
one per row. An update that changes no count, key or window start (sending, quarantining) changes
nothing here. A day whose windows are all gone is removed; a truncate empties them. No
foreign key: the days follow the windows, which go with their subscription.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DAY = "(window_start AT TIME ZONE 'UTC')::date"
_ADD = """
    ON CONFLICT (subscription_id, day) DO UPDATE SET
        windows = usage_days.windows + excluded.windows,
        calls = usage_days.calls + excluded.calls,
        successful_calls = usage_days.successful_calls + excluded.successful_calls,
        failed_calls = usage_days.failed_calls + excluded.failed_calls
"""
# Rows of `usage_records` grouped per (subscription, day) as signed sums: $sign 1 adds, -1 removes.
_GROUPED = f"""
    SELECT subscription_id, {_DAY} AS day, {{sign}} * count(*), {{sign}} * sum(quantity),
           {{sign}} * sum(successful_calls), {{sign}} * sum(failed_calls)
    FROM {{rows}} GROUP BY 1, 2
"""  # noqa: S608  (constant SQL)
# An update's rows whose counts, subscription or window start changed (old and new side by side).
_CHANGED = """
    SELECT {columns} FROM removed r JOIN added a ON a.id = r.id
    WHERE (r.subscription_id, r.window_start, r.quantity, r.successful_calls, r.failed_calls)
          IS DISTINCT FROM (a.subscription_id, a.window_start, a.quantity, a.successful_calls, a.failed_calls)
"""
_DROP_EMPTY = f"""
    DELETE FROM usage_days d
    WHERE d.windows <= 0 AND (d.subscription_id, d.day) IN (SELECT subscription_id, {_DAY} FROM {{rows}});
"""  # noqa: S608  (constant SQL)

FUNCTIONS = {
    # New days are the rule (a day's windows mostly come in one batch): a plain insert, and the
    # speculative upsert, which costs about a third more per row, only when a day was there.
    "usage_days_insert": f"""
        BEGIN
            INSERT INTO usage_days (subscription_id, day, windows, calls, successful_calls, failed_calls)
            {_GROUPED.format(sign=1, rows="added")} ORDER BY 1, 2;
        EXCEPTION WHEN unique_violation THEN
            INSERT INTO usage_days (subscription_id, day, windows, calls, successful_calls, failed_calls)
            {_GROUPED.format(sign=1, rows="added")} ORDER BY 1, 2
            {_ADD};
        END;
    """,
    "usage_days_delete": f"""
        UPDATE usage_days d
        SET windows = d.windows + g.windows, calls = d.calls + g.calls,
            successful_calls = d.successful_calls + g.successful_calls,
            failed_calls = d.failed_calls + g.failed_calls
        FROM ({_GROUPED.format(sign=-1, rows="removed")})
             AS g(subscription_id, day, windows, calls, successful_calls, failed_calls)
        WHERE d.subscription_id = g.subscription_id AND d.day = g.day;
        {_DROP_EMPTY.format(rows="removed")}
    """,  # noqa: S608  (constant SQL)
    "usage_days_update": f"""
        INSERT INTO usage_days (subscription_id, day, windows, calls, successful_calls, failed_calls)
        SELECT subscription_id, day, sum(windows), sum(calls), sum(successful_calls), sum(failed_calls)
        FROM (
            {_GROUPED.format(sign=1, rows="(" + _CHANGED.format(columns="a.*") + ") AS n")}
            UNION ALL
            {_GROUPED.format(sign=-1, rows="(" + _CHANGED.format(columns="r.*") + ") AS o")}
        ) AS delta(subscription_id, day, windows, calls, successful_calls, failed_calls)
        GROUP BY 1, 2 ORDER BY 1, 2
        {_ADD};
        {_DROP_EMPTY.format(rows="(" + _CHANGED.format(columns="r.*") + ") AS o")}
    """,  # noqa: S608  (constant SQL)
    # DELETE, not TRUNCATE: a TRUNCATE of both tables in one statement still holds usage_days open.
    "usage_days_truncate": "DELETE FROM usage_days;",
}
TRIGGERS = {
    "usage_days_insert": "AFTER INSERT ON usage_records REFERENCING NEW TABLE AS added",
    "usage_days_delete": "AFTER DELETE ON usage_records REFERENCING OLD TABLE AS removed",
    "usage_days_update": "AFTER UPDATE ON usage_records REFERENCING OLD TABLE AS removed NEW TABLE AS added",
    "usage_days_truncate": "AFTER TRUNCATE ON usage_records",
}


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("successful_calls", sa.BigInteger(), nullable=False),
        sa.Column("failed_calls", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", "day", name=op.f("pk_usage_days")),
    )
    for name, body in FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND\n$$"
        )
        op.execute(f"CREATE TRIGGER {name} {TRIGGERS[name]} FOR EACH STATEMENT EXECUTE FUNCTION {name}()")
    op.execute(
        "INSERT INTO usage_days (subscription_id, day, windows, calls, successful_calls, failed_calls) "
        + _GROUPED.format(sign=1, rows="usage_records")
    )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON usage_records")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("usage_days")
