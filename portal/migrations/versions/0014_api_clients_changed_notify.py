"""api clients: PostgreSQL notifies every change to a client, so web processes may keep client rows

Every API call checks that its client is still active. Web processes keep the rows they read
(``portal.api.client_status``) and drop one when this notification names it: a revocation
applies in every process milliseconds after it commits, whoever made it. A TRUNCATE notifies an
empty payload, which means "every client". SQLite needs nothing: there, rows are read each time.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 04:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

CHANNEL = "api_clients_changed"

PG_FUNCTION = f"""
CREATE FUNCTION portal_api_clients_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify('{CHANNEL}', '');
  ELSE
    PERFORM pg_notify('{CHANNEL}', OLD.id);
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(PG_FUNCTION)
    op.execute(
        "CREATE TRIGGER api_clients_changed AFTER UPDATE OR DELETE ON api_clients "
        "FOR EACH ROW EXECUTE FUNCTION portal_api_clients_changed()"
    )
    op.execute(
        "CREATE TRIGGER api_clients_truncated AFTER TRUNCATE ON api_clients "
        "FOR EACH STATEMENT EXECUTE FUNCTION portal_api_clients_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS api_clients_truncated ON api_clients")
    op.execute("DROP TRIGGER IF EXISTS api_clients_changed ON api_clients")
    op.execute("DROP FUNCTION IF EXISTS portal_api_clients_changed()")
