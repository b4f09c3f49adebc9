"""Integration clients' status, kept by each web process until the database says it changed
(portal/api/client_status.py): a change made anywhere reaches every process, and nothing is kept
that might be stale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import delete, text, update

from portal.api.client_status import LISTENER, ClientStatuses
from portal.api.models import IntegrationClient, RefreshToken
from portal.container import Portal
from portal.db import utcnow
from portal.hot_reads import HotReads

DEADLINE_SECONDS = 5.0


class CountedReads(HotReads):
    """The hot reads, counting what reaches the database; ``gate`` (when set) holds each read."""

    def __init__(self, portal: Portal) -> None:
        super().__init__(portal.db)
        self.reads = 0
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def first(self, statement: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self.reads += 1
        row = await super().first(statement, params)
        if self.gate is not None:
            await self.gate()
        return row


@asynccontextmanager
async def listening_statuses(portal: Portal) -> AsyncIterator[tuple[ClientStatuses, CountedReads]]:
    hot = CountedReads(portal)
    await hot.open()
    statuses = ClientStatuses(hot)
    await statuses.open()
    try:
        if not portal.db.is_sqlite:
            await until(lambda: statuses.listening)
        yield statuses, hot
    finally:
        await statuses.close()
        await hot.close()


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(portal: Portal, scenario: Callable[[Portal], Awaitable[None]]) -> None:
    with start_blocking_portal() as loop:  # its own loop, whatever else runs in this thread
        loop.call(scenario, portal)


def new_client(portal: Portal, name: str = "Lab system") -> str:
    client, _secret = portal.api.create_client(name, ["access-events:write"], actor="staff:test")
    return client.id


def revoke_behind_the_portals_back(portal: Portal, client_id: str) -> None:
    """As another web process (or an operator in psql) would: no word to this process."""
    with portal.db.write() as session:
        session.execute(update(IntegrationClient).where(IntegrationClient.id == client_id).values(revoked_at=utcnow()))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_reads_the_status_on_every_call(portal: Portal) -> None:
    client_id = new_client(portal)

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, hot):
            assert await statuses.status(client_id) == (True, "access-events:write")
            revoke_behind_the_portals_back(portal, client_id)
            assert await statuses.status(client_id) == (False, "access-events:write")
            assert hot.reads == 2

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_kept_status_is_dropped_when_another_process_revokes_the_client(portal: Portal) -> None:
    """ASVS 10.4.9 (token revocation): the row is read once, then kept; a revocation committed
    elsewhere reaches this process through the database's notification."""
    client_id = new_client(portal)

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, hot):
            for _ in range(3):
                assert await statuses.status(client_id) == (True, "access-events:write")
            assert hot.reads == 1
            revoke_behind_the_portals_back(portal, client_id)
            await until(lambda: client_id not in statuses._kept)
            assert await statuses.status(client_id) == (False, "access-events:write")
            assert hot.reads == 2

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_deleting_clients_drops_what_is_kept(portal: Portal) -> None:
    client_id = new_client(portal)

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, _hot):
            await statuses.status(client_id)
            assert client_id in statuses._kept
            with portal.db.write() as session:
                session.execute(delete(RefreshToken))
                session.execute(delete(IntegrationClient).where(IntegrationClient.id == client_id))
            await until(lambda: client_id not in statuses._kept)
            assert await statuses.status(client_id) is None

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_read_under_way_when_the_client_changes_is_not_kept(portal: Portal) -> None:
    """The read may have seen the row before the change committed: keeping it could keep a revoked
    client alive."""
    client_id = new_client(portal)

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, hot):

            async def change_meanwhile() -> None:
                statuses.forget(client_id)

            hot.gate = change_meanwhile
            await statuses.status(client_id)
            hot.gate = None
            assert client_id not in statuses._kept
            await statuses.status(client_id)
            assert hot.reads == 2
            assert client_id in statuses._kept

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_nothing_is_kept_while_the_listener_is_down_and_keeping_resumes_once_it_is_back(portal: Portal) -> None:
    """A change made while the listener is down would go unheard: so, meanwhile, every call reads."""
    client_id = new_client(portal)
    url = portal.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, hot):
            await statuses.status(client_id)
            with psycopg.connect(url, autocommit=True) as outsider:
                ended = outsider.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [LISTENER]
                ).fetchall()
            assert ended == [(True,)]
            await until(lambda: not statuses.listening)
            assert not statuses._kept
            revoke_behind_the_portals_back(portal, client_id)
            reads = hot.reads
            for _ in range(2):
                assert await statuses.status(client_id) == (False, "access-events:write")
            assert hot.reads == reads + 2
            await until(lambda: statuses.listening)
            await statuses.status(client_id)
            assert client_id in statuses._kept

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_truncate_drops_every_kept_status(portal: Portal) -> None:
    first, second = new_client(portal, "Lab system"), new_client(portal, "Pharmacy system")

    async def scenario(portal: Portal) -> None:
        async with listening_statuses(portal) as (statuses, _hot):
            await statuses.status(first)
            await statuses.status(second)
            with portal.db.write() as session:
                session.execute(text("TRUNCATE api_clients CASCADE"))
            await until(lambda: not statuses._kept)

    run(portal, scenario)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_second_event_loop_cannot_stop_the_first_ones_listener(portal: Portal) -> None:
    """Two apps on one set of services (as in tests): the second's shutdown leaves the first one's
    listener alone, and the first still stops it."""
    statuses = ClientStatuses(portal.hot)

    async def wait_until_listening() -> None:
        await until(lambda: statuses.listening)

    with start_blocking_portal() as owner, start_blocking_portal() as other:
        owner.call(statuses.open)
        owner.call(wait_until_listening)
        other.call(statuses.open)
        other.call(statuses.close)
        assert statuses.listening
        owner.call(statuses.close)
        assert not statuses.listening
