"""Pooled PostgreSQL connections after the server dropped them (a restart, a failover, an idle timeout)."""

from __future__ import annotations

import psycopg
import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import func, literal, select, text
from sqlalchemy.exc import OperationalError

from portal import db as portal_db
from portal.audit import ledger as ledger_module
from portal.audit.ledger import AuditEvent
from portal.container import Portal
from portal.hot_reads import HotRead

pytestmark = pytest.mark.pg


@pytest.fixture
def backend() -> str:
    return "pg"


def _drop_every_pooled_connection(portal: Portal) -> None:
    """What a server restart does to the pool: the server ends every backend of this database."""
    url = portal.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as outsider:
        outsider.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _warm_pool(portal: Portal) -> None:
    for _ in range(3):
        assert portal.ledger.size() >= 0


def test_an_idle_connection_is_checked_before_use_so_no_request_fails(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warm_pool(portal)
    _drop_every_pooled_connection(portal)
    monkeypatch.setattr(portal_db, "IDLE_PING_SECONDS", 0.0)  # every pooled connection counts as idle
    with portal.db.lone_read() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert portal.ledger.size() >= 0


def test_a_connection_used_moments_ago_fails_one_request_and_the_pool_recovers(portal: Portal) -> None:
    _warm_pool(portal)
    _drop_every_pooled_connection(portal)
    with pytest.raises(OperationalError), portal.db.lone_read() as conn:
        conn.execute(text("SELECT 1"))
    for _ in range(3):  # the error invalidated the whole pool: every later checkout connects afresh
        with portal.db.lone_read() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_the_event_loop_pool_retries_a_read_once_its_connections_were_dropped(portal: Portal) -> None:
    """The decision API's reads (portal/hot_reads.py): after the server ended every connection, the
    next read drops the broken ones and is answered on a fresh connection: no request fails."""
    statement = select(literal(1).label("one"))

    async def scenario() -> list[tuple[object, ...] | None]:
        await portal.hot.open()
        try:
            assert portal.hot.on_event_loop
            answers = [await portal.hot.first(statement, {})]
            _drop_every_pooled_connection(portal)
            answers += [await portal.hot.first(statement, {}) for _ in range(3)]
            return answers
        finally:
            await portal.hot.close()

    with start_blocking_portal() as loop:  # its own loop, whatever else runs in this thread
        assert loop.call(scenario) == [(1,)] * 4
    assert not portal.hot.on_event_loop


def test_reads_sent_together_answer_each_statement_in_order_even_after_connections_were_dropped(
    portal: Portal,
) -> None:
    """``HotReads.together`` (the access page's facts and rows): one round trip on PostgreSQL, each
    statement's rows in its place, and the same retry as a single read."""
    reads = (
        HotRead(select(literal(1).label("one")), {}),
        HotRead(select(func.generate_series(2, 3).label("n")), {}, prepare=False),
        HotRead(select(literal(4).label("none")).where(literal(False)), {}),
    )
    expected = [[(1,)], [(2,), (3,)], []]

    async def scenario() -> list[list[list[tuple[object, ...]]]]:
        await portal.hot.open()
        try:
            answers = [await portal.hot.together(*reads)]
            _drop_every_pooled_connection(portal)
            answers += [await portal.hot.together(*reads) for _ in range(2)]
            return answers
        finally:
            await portal.hot.close()

    with start_blocking_portal() as loop:
        assert loop.call(portal.hot.together, *reads) == expected  # the worker-thread path, before the pool opens
        assert loop.call(scenario) == [expected] * 3


def test_a_second_event_loop_reads_through_a_worker_thread_and_cannot_close_the_pool(portal: Portal) -> None:
    """An asyncio pool serves only the loop that opened it (two apps on one set of services, as in tests)."""
    statement = select(literal(1).label("one"))
    with start_blocking_portal() as owner, start_blocking_portal() as other:
        owner.call(portal.hot.open)
        try:
            assert other.call(portal.hot.first, statement, {}) == (1,)
            other.call(portal.hot.close)
            assert portal.hot.on_event_loop
            assert owner.call(portal.hot.first, statement, {}) == (1,)
        finally:
            owner.call(portal.hot.close)
    assert not portal.hot.on_event_loop


def test_the_ledger_group_committer_replaces_a_dropped_connection_before_its_next_batch(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision API's ledger entries are committed on a connection the group committer keeps for
    itself (portal/audit/ledger.py): after the server dropped it, the next batch still commits."""
    first = portal.ledger.record_grouped(AuditEvent(action="test.before", actor="system:test"))
    _drop_every_pooled_connection(portal)
    monkeypatch.setattr(ledger_module, "IDLE_PING_SECONDS", 0.0)  # its connection counts as idle
    monkeypatch.setattr(portal_db, "IDLE_PING_SECONDS", 0.0)  # and so do the pool's, for the check below
    later = portal.ledger.record_grouped(AuditEvent(action="test.after", actor="system:test"))
    assert later == first + 1
    assert portal.ledger.verify().ok
