"""Migrations run unchanged on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

from portal import migrate
from portal.audit.ledger import AuditEvent
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


def test_access_event_weeks_are_backfilled(portal: Portal) -> None:
    """0011 gives every existing access the Monday (UTC) of its ISO week, as new accesses get it."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from portal.access.models import AccessEvent, week_of
    from portal.records.models import Patient

    times = [
        datetime(2026, 10, 5, 0, 0, tzinfo=UTC),  # a Monday, first instant
        datetime(2026, 10, 11, 23, 59, 59, 999_999, tzinfo=UTC),  # the Sunday after, last instant
        datetime(2027, 1, 1, 12, 30, tzinfo=UTC),  # a Friday in ISO week 2026-W53
    ]
    url = portal.settings.database_url
    migrate.downgrade(url, "0010")
    with portal.db.engine.begin() as conn:
        conn.execute(insert(Patient), {"id": "p1", "status": "active", "created_at": times[0], "updated_at": times[0]})
        for i, when in enumerate(times):
            conn.execute(
                insert(AccessEvent),
                {
                    "id": f"e{i}",
                    "patient_id": "p1",
                    "source_key": f"k{i}",
                    "occurred_at": when,
                    "action": "read",
                    "purpose": "TREAT",
                    "emergency": False,
                    "agent_kind": "person",
                    "origin": "api",
                    "org_index": "o",
                    "role_index": "r",
                    "key_version": 1,
                    "body": b"x",
                    "created_at": when,
                },
            )
    migrate.upgrade(url)
    with portal.db.read() as session:
        weeks = list(session.scalars(select(AccessEvent.week).order_by(AccessEvent.id)))
    assert weeks == [week_of(when) for when in times]
    assert [str(week) for week in weeks] == ["2026-10-05", "2026-10-05", "2026-12-28"]


def test_ledger_entries_survive_0016_both_ways(portal: Portal) -> None:
    """0016 drops the unused action index and, on SQLite, rebuilds ledger_entries so that seq is the
    table's row key: the entries, their order, the chain and the append-only triggers all survive,
    up and down again."""
    url = portal.settings.database_url
    migrate.downgrade(url, "0015")
    for n in range(5):
        portal.ledger.record(AuditEvent(action=f"test.{n}", actor="system", subject="s1"))

    def stored() -> list[tuple[int, bytes]]:
        with portal.db.engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, entry FROM ledger_entries ORDER BY seq"))
            return [(seq, bytes(entry)) for seq, entry in rows]

    before = stored()
    for revision in ("head", "0015", "head"):
        if revision == "head":
            migrate.upgrade(url)
        else:
            migrate.downgrade(url, revision)
        assert stored() == before
        assert portal.ledger.verify().ok
        for statement in ("UPDATE ledger_entries SET action = 'x'", "DELETE FROM ledger_entries"):
            with pytest.raises(DatabaseError, match="append-only"), portal.db.engine.begin() as conn:
                conn.execute(text(statement))
    indexes = {index["name"] for index in inspect(portal.db.engine).get_indexes("ledger_entries")}
    assert indexes == {"ix_ledger_entries_subject_seq"}
    if portal.db.is_sqlite:
        with portal.db.engine.connect() as conn:
            # No sqlite_autoindex: the primary key is the row key, not an index beside the table.
            assert [row[1] for row in conn.exec_driver_sql("PRAGMA index_list(ledger_entries)")] == [
                "ix_ledger_entries_subject_seq"
            ]
    portal.ledger.record(AuditEvent(action="test.after", actor="system", subject="s1"))
    assert [seq for seq, _entry in stored()] == [0, 1, 2, 3, 4, 5]
