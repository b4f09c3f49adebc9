"""access events: week column (Monday of the ISO week, UTC) for the weekly chart

The patient's access page counts accesses per week and organisation; with the week in a clear
column, and an index holding it with the other clear columns the filters use, the database counts
from the index instead of the portal reading every access.
The week derives from occurred_at alone, so it holds nothing about the patient that was not
already in clear. Existing rows are backfilled.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 18:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The Monday on or before the day, in UTC. SQLite stores UTC times as text without an offset; only
# the date part is read, as date() rounds times to milliseconds (23:59:59.9996 would be the next day).
# 'weekday 1' moves forward to the next Monday unless the day is one, hence the 6 days back.
BACKFILL = {
    "sqlite": "UPDATE access_events SET week = date(substr(occurred_at, 1, 10), '-6 days', 'weekday 1')",
    "postgresql": "UPDATE access_events SET week = date_trunc('week', occurred_at AT TIME ZONE 'UTC')::date",
}


def upgrade() -> None:
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("week", sa.Date(), nullable=True))
    op.execute(BACKFILL[op.get_bind().dialect.name])
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.alter_column("week", existing_type=sa.Date(), nullable=False)
        batch_op.drop_index("ix_access_events_patient_org")
        batch_op.create_index(
            "ix_access_events_chart",
            ["patient_id", "org_index", "week", "emergency", "agent_kind", "action", "purpose"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.drop_index("ix_access_events_chart")
        batch_op.create_index("ix_access_events_patient_org", ["patient_id", "org_index"], unique=False)
        batch_op.drop_column("week")
