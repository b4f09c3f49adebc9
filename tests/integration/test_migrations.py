"""Migrations run unchanged on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from portal import migrate
from portal.container import Portal
from portal.models import Base


def test_migrations_match_the_models(portal: Portal) -> None:
    with portal.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(portal: Portal) -> None:
    url = portal.settings.database_url
    migrate.downgrade(url, "base")
    assert not migrate.is_current(portal.db.engine)
    migrate.upgrade(url)
    assert migrate.is_current(portal.db.engine)


def test_sqlite_pragmas(portal: Portal) -> None:
    if not portal.db.is_sqlite:
        return
    with portal.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
