"""access events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 15:00:40.563661
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("source_key", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=12), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("agent_kind", sa.String(length=8), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("org_index", sa.String(length=64), nullable=False),
        sa.Column("role_index", sa.String(length=64), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_access_events_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_events")),
        sa.UniqueConstraint("source_key", name=op.f("uq_access_events_source_key")),
    )
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_events_org_index"), ["org_index"], unique=False)
        batch_op.create_index("ix_access_events_patient_time", ["patient_id", "occurred_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_events", schema=None) as batch_op:
        batch_op.drop_index("ix_access_events_patient_time")
        batch_op.drop_index(batch_op.f("ix_access_events_org_index"))

    op.drop_table("access_events")
