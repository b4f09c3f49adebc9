"""consent

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:45:12.221112
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_purposes",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("lawful_basis", sa.String(length=200), nullable=False),
        sa.Column("categories", sa.String(length=300), nullable=False),
        sa.Column("recipients", sa.String(length=500), nullable=False),
        sa.Column("jurisdiction", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("purpose_of_use", sa.String(length=20), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_consent_purposes")),
    )
    op.create_table(
        "consent_notice_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("purpose_code", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("material", sa.Boolean(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["purpose_code"],
            ["consent_purposes.code"],
            name=op.f("fk_consent_notice_versions_purpose_code_consent_purposes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_notice_versions")),
        sa.UniqueConstraint("purpose_code", "version", name=op.f("uq_consent_notice_versions_purpose_code")),
    )
    op.create_table(
        "consent_decisions",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("purpose_code", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("notice_version_id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["notice_version_id"],
            ["consent_notice_versions.id"],
            name=op.f("fk_consent_decisions_notice_version_id_consent_notice_versions"),
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_consent_decisions_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["purpose_code"], ["consent_purposes.code"], name=op.f("fk_consent_decisions_purpose_code_consent_purposes")
        ),
        sa.PrimaryKeyConstraint("patient_id", "purpose_code", name=op.f("pk_consent_decisions")),
    )
    op.create_table(
        "consent_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("purpose_code", sa.String(length=40), nullable=False),
        sa.Column("event", sa.String(length=12), nullable=False),
        sa.Column("notice_version_id", sa.String(length=36), nullable=False),
        sa.Column("notice_hash", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=12), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("evidence_ref", sa.String(length=200), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["notice_version_id"],
            ["consent_notice_versions.id"],
            name=op.f("fk_consent_events_notice_version_id_consent_notice_versions"),
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_consent_events_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["purpose_code"], ["consent_purposes.code"], name=op.f("fk_consent_events_purpose_code_consent_purposes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.create_index("ix_consent_events_patient_created", ["patient_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_events_patient_created")

    op.drop_table("consent_events")
    op.drop_table("consent_decisions")
    op.drop_table("consent_notice_versions")
    op.drop_table("consent_purposes")
