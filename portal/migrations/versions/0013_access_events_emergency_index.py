"""access events: a partial index of emergency accesses, newest first per patient

"Emergency only" shows the newest break-the-glass accesses. Without this index the database reads
every emergency access of the patient and sorts them (about 1 ms for 200); with it, it reads the
page's rows in order. Emergency accesses are a small share of all, so the index is small and
costs ingest only for them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 01:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

EMERGENCY = sa.text("emergency IS true")


def upgrade() -> None:
    op.create_index(
        "ix_access_events_emergency",
        "access_events",
        ["patient_id", "occurred_at"],
        postgresql_where=EMERGENCY,
        sqlite_where=EMERGENCY,
    )


def downgrade() -> None:
    op.drop_index("ix_access_events_emergency", table_name="access_events")
