"""Whether an integration client is active, and its scopes: checked on every API call.

A revocation must apply at once. Reading the client's row on each call cost the decision API about
0.2 ms of CPU a call (a quarter of its total; ``tests/bench/bench_consent.py``). So, on PostgreSQL,
each web process keeps the rows it has read and drops one as soon as it changes:

- a trigger notifies ``api_clients_changed`` with the client's id on every update or delete
  (migration 0014), and each web process listens on a connection of its own;
- the process that made the change drops the row right after its commit, without waiting for
  the notification.

Rows are kept only while the listening connection is up; when it drops, everything kept is
dropped too, and nothing is kept again until it listens anew. A read that was under way when a
change (or a reconnection) happened is not kept either, since it may have seen the old row.
Kept rows also expire after ``KEEP_SECONDS``, in case a notification is lost some other way.

SQLite (the embedded default) has no notifications: there the row is read on every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import psycopg
import structlog
from cachetools import TTLCache
from sqlalchemy import bindparam, select

from portal.api.models import IntegrationClient
from portal.db import IDLE_PING_SECONDS
from portal.hot_reads import HotReads

log = structlog.get_logger("portal.api")

CHANNEL = "api_clients_changed"  # as in migration 0014
KEEP_SECONDS = 300.0
MAX_KEPT = 4_096
RECONNECT_SECONDS = 1.0
LISTENER = "portal-api-clients-listener"  # its application_name, as the database shows it

ClientStatus = tuple[bool, str]  # (active, space-separated scopes)

_CLIENT_STATUS = select(IntegrationClient.revoked_at.is_(None), IntegrationClient.scopes).where(
    IntegrationClient.id == bindparam("client")
)


class ClientStatuses:
    def __init__(self, hot: HotReads) -> None:
        self._hot = hot
        self._kept: TTLCache[str, ClientStatus] = TTLCache(maxsize=MAX_KEPT, ttl=KEEP_SECONDS)
        # Bumped by every change and every (dis)connection of the listener: a read that started
        # under an older generation is not kept. Guarded by the lock with the rows, because
        # ``forget`` is called from worker threads.
        self._generation = 0
        self._listening = False
        self._lock = threading.Lock()
        self._listener: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether changes are being heard, so rows are kept."""
        return self._listening

    async def open(self) -> None:
        """Start listening (PostgreSQL only) on the running event loop, which then owns the listener."""
        if self._hot.db.is_sqlite or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen_forever(), name="api-clients-listener")

    async def close(self) -> None:
        """Stop listening, when called on the loop that opened it (a second app on the same services, as
        in tests, cannot stop the first one's listener)."""
        listener = self._listener
        if listener is None or listener.get_loop() is not asyncio.get_running_loop():
            return
        self._listener = None
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        self._set_listening(False)

    async def status(self, client_id: str) -> ClientStatus | None:
        """The client's (active, scopes), or None for an unknown client."""
        with self._lock:
            kept = self._kept.get(client_id)
            generation = self._generation
        if kept is not None:
            return kept
        row = await self._hot.first(_CLIENT_STATUS, {"client": client_id})
        if row is None:
            return None
        status: ClientStatus = (bool(row[0]), str(row[1]))
        with self._lock:
            if self._listening and generation == self._generation:
                self._kept[client_id] = status
        return status

    def forget(self, client_id: str) -> None:
        """Drop a client's row; ``""`` drops every row (safe from any thread)."""
        with self._lock:
            self._generation += 1
            if client_id:
                self._kept.pop(client_id, None)
            else:
                self._kept.clear()

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            self._listening = listening
            self._generation += 1
            self._kept.clear()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                log.warning("api.client_listener_lost", error=str(exc))
            finally:
                self._set_listening(False)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self) -> None:
        conninfo = self._hot.db.conninfo()
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, application_name=LISTENER) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._set_listening(True)
            while True:
                async for note in conn.notifies(timeout=IDLE_PING_SECONDS):
                    self.forget(note.payload)
                # A connection that died without a word is found here, not left trusted.
                await conn.execute("SELECT 1")
