"""PostgreSQL least privilege: the app role cannot rewrite the ledger even with triggers bypassed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from portal.audit.ledger import AuditEvent
from portal.container import Portal
from portal.dbroles import grant_app_role

pytestmark = pytest.mark.pg


@pytest.mark.parametrize("backend", ["pg"], indirect=True)
def test_app_role_can_append_but_not_rewrite(portal: Portal, request: pytest.FixtureRequest) -> None:
    pg = request.getfixturevalue("pg_server")
    pg.create_role("portal_app_test", "app-pass")
    grant_app_role(portal.db.engine, "portal_app_test")
    portal.ledger.record(AuditEvent(action="test", actor="system"))
    database = portal.db.engine.url.database
    app = create_engine(pg.url_for(database, user="portal_app_test", password="app-pass"))
    try:
        with app.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 1
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, payload, idempotency_key, status, attempts, max_attempts, "
                    "run_after, created_at, updated_at) VALUES ('j', 'k', '{}', 'i', 'queued', 0, 1, "
                    "now(), now(), now())"
                )
            )
        for statement in (
            "UPDATE ledger_entries SET action = 'x'",
            "DELETE FROM ledger_entries",
            "TRUNCATE ledger_entries",
            "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
        ):
            with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), app.begin() as conn:
                conn.execute(text(statement))
    finally:
        app.dispose()
