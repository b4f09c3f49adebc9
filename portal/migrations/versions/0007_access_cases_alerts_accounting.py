"""access cases alerts accounting

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 15:04:59.164784
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_alert_preferences",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("new_organisation", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_access_alert_preferences_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_access_alert_preferences")),
    )
    op.create_table(
        "disclosure_accountings",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disclosures", sa.Integer(), nullable=False),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_disclosure_accountings_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disclosure_accountings")),
    )
    with op.batch_alter_table("disclosure_accountings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disclosure_accountings_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "access_cases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("access_event_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("finding", sa.String(length=20), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("assignee", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["access_event_id"], ["access_events.id"], name=op.f("fk_access_cases_access_event_id_access_events")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_access_cases_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_cases")),
    )
    with op.batch_alter_table("access_cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_cases_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "access_case_messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("author", sa.String(length=60), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["access_cases.id"], name=op.f("fk_access_case_messages_case_id_access_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_case_messages")),
    )
    with op.batch_alter_table("access_case_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_case_messages_case_id"), ["case_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_case_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_case_messages_case_id"))

    op.drop_table("access_case_messages")
    with op.batch_alter_table("access_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_cases_patient_id"))

    op.drop_table("access_cases")
    with op.batch_alter_table("disclosure_accountings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disclosure_accountings_patient_id"))

    op.drop_table("disclosure_accountings")
    op.drop_table("access_alert_preferences")
