"""access events index by patient and organisation

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 15:58:40.667166
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.create_index("ix_access_events_patient_org", ["patient_id", "org_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.drop_index("ix_access_events_patient_org")
