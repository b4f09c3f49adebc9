"""ledger entries: one index fewer to write per entry

Every entry maintained an index on ``action`` that no query uses: the two look-ups by action (a
person's security activity, the entries behind a request's evidence) are also by subject, and the
(subject, seq) index serves them. On SQLite the BIGINT primary key was moreover an index beside the
table's own row key; as INTEGER it is that key, so appending an entry writes two B-trees instead of
four, and a verification's span of entries is read from the table itself. Ingest, which appends an
entry per access event, went from 14.1 to 13.4 ms a batch of 1,000 on SQLite for the index alone.

SQLite cannot change a primary key in place: the table is rebuilt (Alembic's batch mode copies the
rows, in order), and its append-only triggers, which the rebuild drops, are made again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_SQLITE_VERBS = ("UPDATE", "DELETE")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _retype_seq(new: sa.types.TypeEngine[int], old: sa.types.TypeEngine[int]) -> None:
    """Rebuild SQLite's ledger_entries with ``seq`` as ``new``, keeping its append-only triggers."""
    for verb in _SQLITE_VERBS:
        op.execute(f"DROP TRIGGER IF EXISTS ledger_entries_no_{verb.lower()}")
    with op.batch_alter_table("ledger_entries", recreate="always") as batch_op:
        batch_op.alter_column("seq", type_=new, existing_type=old, existing_nullable=False, autoincrement=False)
    for verb in _SQLITE_VERBS:
        op.execute(
            f"CREATE TRIGGER ledger_entries_no_{verb.lower()} BEFORE {verb} ON ledger_entries "
            f"BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only: {verb} on ledger_entries refused'); END"
        )


def upgrade() -> None:
    op.drop_index("ix_ledger_entries_action", table_name="ledger_entries")
    if _sqlite():
        _retype_seq(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    if _sqlite():
        _retype_seq(sa.BigInteger(), sa.Integer())
    op.create_index("ix_ledger_entries_action", "ledger_entries", ["action"], unique=False)
