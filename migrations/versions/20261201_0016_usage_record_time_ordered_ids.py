"""usage windows: ids are time-ordered (uuidv7), given by the database

The usage worker gave each window a random uuid4: every batch's keys landed on random pages of
the primary key's index, so once that index outgrew memory each insert read and dirtied a page of
it, and after each checkpoint wrote that whole page to the WAL again (at 1M windows, 100k new ones
wrote about 4,500 such page images, 25 MB more WAL, and dirtied twice the pages). A uuidv7 starts
with its millisecond and grows within a connection: new windows go to the right edge of the
index, a few pages whatever the table's size. The writers no longer send an id; the column's
default (PostgreSQL 18's `uuidv7()`) gives it. Existing ids stay as they are.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_records ALTER COLUMN id SET DEFAULT uuidv7()")


def downgrade() -> None:
    op.execute("ALTER TABLE usage_records ALTER COLUMN id DROP DEFAULT")
