"""access log versions: a per-patient counter the database bumps on every change to their accesses

The access page caches each patient's chart summary (weekly counts, organisation names) under
this version. Triggers on access_events keep it, so no writer (ingest, the portal's own reads,
the retention sweep, erasure, a restore) can forget to. It is derived data: backups leave it out
and a restore rebuilds it as the accesses are inserted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 23:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

VERBS = ("INSERT", "UPDATE", "DELETE")

# PostgreSQL: one upsert per statement and patient, from the statement's transition table. In
# patient order, so concurrent batches lock the counters in the same order (no deadlock).
PG_FUNCTION = """
CREATE FUNCTION portal_access_events_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO access_log_versions AS v (patient_id, version)
  SELECT DISTINCT patient_id, 1 FROM changed ORDER BY patient_id
  ON CONFLICT (patient_id) DO UPDATE SET version = v.version + 1;
  RETURN NULL;
END $$
"""
# Which rows name the patient: the new ones, or the deleted ones (a transition table on
# PostgreSQL, the row itself in SQLite's row triggers, where an upsert costs microseconds).
CHANGED = {"INSERT": "NEW", "UPDATE": "NEW", "DELETE": "OLD"}


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for verb in VERBS:
            op.execute(
                f"CREATE TRIGGER access_events_{verb.lower()}_versions AFTER {verb} ON access_events "
                f"REFERENCING {CHANGED[verb]} TABLE AS changed "
                "FOR EACH STATEMENT EXECUTE FUNCTION portal_access_events_changed()"
            )
        return
    for verb in VERBS:
        op.execute(
            f"CREATE TRIGGER access_events_{verb.lower()}_versions AFTER {verb} ON access_events BEGIN "  # noqa: S608
            f"INSERT INTO access_log_versions (patient_id, version) VALUES ({CHANGED[verb]}.patient_id, 1) "
            "ON CONFLICT (patient_id) DO UPDATE SET version = version + 1; END"
        )


def _drop_triggers() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for verb in VERBS:
        op.execute(
            f"DROP TRIGGER IF EXISTS access_events_{verb.lower()}_versions" + (" ON access_events" if pg else "")
        )
    if pg:
        op.execute("DROP FUNCTION IF EXISTS portal_access_events_changed()")


def upgrade() -> None:
    op.create_table(
        "access_log_versions",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_access_log_versions")),
    )
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_table("access_log_versions")
