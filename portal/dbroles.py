"""PostgreSQL privileges for the application's login role (least privilege).

Migrations run as the schema owner; the web and worker processes connect as an app role that
may read and write ordinary tables but can only SELECT and INSERT on the audit ledger, so even a
compromised app process cannot rewrite history (the triggers are a second, independent guard).
"""

from __future__ import annotations

from sqlalchemy import Engine, text

APPEND_ONLY = ("ledger_entries", "ledger_checkpoints")


def grant_app_role(engine: Engine, role: str) -> None:
    if engine.dialect.name != "postgresql":
        raise ValueError("application roles exist on PostgreSQL only; SQLite relies on its triggers")
    quoted = engine.dialect.identifier_preparer.quote(role)
    with engine.begin() as conn:
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {quoted}"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}"))
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}"))
        for table in APPEND_ONLY:
            conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {quoted}"))
