"""Reads on the event loop, for what runs many times a second: the API calls of other systems, the
session look-up of every web request, and the patient's access page.

Every consent decision reads the calling client's status and the patient's choice. Through the
ORM stack in a worker thread such a read costs about 420 µs of CPU (thread hand-off, GIL
contention, SQLAlchemy's execution machinery); on an asyncio psycopg pool it costs about 70 µs
(figures from ``tests/bench/bench_consent.py``). So, on PostgreSQL, these reads go through a small
async pool, with statements that SQLAlchemy compiles once. Elsewhere (SQLite, or before the app
has started the pool, e.g. in the CLI) they run through ``Database.lone_read`` in a worker thread.

Pooled connections that sat idle are pinged before use, as on the synchronous pool; should a
connection still turn out dead, the pool drops its broken connections and the read is tried once
more, so a database restart costs no request.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import anyio.to_thread
import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Select

from portal.db import IDLE_PING_SECONDS, Database

POOL_SIZE = 8
AnySelect = Select[*tuple[Any, ...]]


class HotRead(NamedTuple):
    """A read-only statement and its values.

    ``prepare=False``: not prepared, so PostgreSQL plans it for the values given. For filters whose
    selectivity differs from one patient to the next, a prepared statement's generic plan can be ten
    times slower (measured: 2.5 ms against 0.15 ms for one organisation's accesses).
    """

    statement: AnySelect
    params: Mapping[str, Any]
    prepare: bool = True


class HotReads:
    def __init__(self, db: Database, size: int = POOL_SIZE) -> None:
        self.db = db
        self.size = size
        self._pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sql: dict[int, tuple[str, dict[str, Any]]] = {}
        self._returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()

    @property
    def on_event_loop(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        """Start the pool (PostgreSQL only) on the running event loop, which then owns it.

        An asyncio pool works only on its own loop, so reads on any other loop (a second app on the
        same services, as in tests) take the worker-thread path instead.
        """
        if self.db.is_sqlite or self._pool is not None:
            return
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self.db.conninfo(),
            min_size=self.size,
            max_size=self.size,
            kwargs={"autocommit": True},
            check=self._ping_if_idle,
            name="hot-reads",
            open=False,
        )
        # Not waiting for the connections: a database that is down at start-up shows in /readyz and
        # delays these reads, rather than keeping the web process from starting.
        await pool.open(wait=False)
        self._pool, self._loop = pool, asyncio.get_running_loop()

    async def close(self) -> None:
        """Close the pool, when called on the loop that opened it."""
        if self._pool is None or not self._owns_running_loop():
            return
        pool, self._pool, self._loop = self._pool, None, None
        await pool.close()

    async def first(self, statement: AnySelect, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a read-only statement that finds at most a few, or None."""
        (rows,) = await self._read((HotRead(statement, params),))
        return rows[0] if rows else None

    async def together(self, *reads: HotRead) -> list[list[tuple[Any, ...]]]:
        """Every row of each of several read-only statements, sent in one round trip on one connection."""
        return await self._read(reads)

    async def _read(self, reads: Sequence[HotRead]) -> list[list[tuple[Any, ...]]]:
        if self._pool is None or not self._owns_running_loop():
            return await anyio.to_thread.run_sync(self._read_in_thread, reads)
        try:
            return await self._read_on_pool(self._pool, reads)
        except psycopg.OperationalError:
            await self._pool.check()
            return await self._read_on_pool(self._pool, reads)

    def _owns_running_loop(self) -> bool:
        return asyncio.get_running_loop() is self._loop

    async def _read_on_pool(self, pool: AsyncConnectionPool, reads: Sequence[HotRead]) -> list[list[tuple[Any, ...]]]:
        async with pool.connection() as conn:
            if len(reads) == 1:
                cursors = [await self._execute(conn, reads[0])]
            else:
                async with conn.pipeline():  # their results arrive together when it ends
                    cursors = [await self._execute(conn, read) for read in reads]
            found = [await cursor.fetchall() for cursor in cursors]
            # Stamped here, not by the pool's reset callback: with one, the pool hands every returned
            # connection to a maintenance task, a few more event-loop steps per read.
            self._returned_at[conn] = time.monotonic()
        return [[tuple(row) for row in rows] for rows in found]

    async def _execute(self, conn: psycopg.AsyncConnection[Any], read: HotRead) -> psycopg.AsyncCursor[Any]:
        sql, defaults = self._compiled(read.statement)
        return await conn.execute(sql, {**defaults, **read.params}, prepare=read.prepare)

    def _read_in_thread(self, reads: Sequence[HotRead]) -> list[list[tuple[Any, ...]]]:
        with self.db.lone_read() as conn:
            return [[tuple(row) for row in conn.execute(read.statement, dict(read.params))] for read in reads]

    def _compiled(self, statement: AnySelect) -> tuple[str, dict[str, Any]]:
        """The SQL and the values bound in the statement itself (literals), compiled once per statement."""
        # Hot statements are module constants, so their identity is a sound cache key.
        found = self._sql.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self.db.engine.dialect)
            found = self._sql[id(statement)] = (str(compiled), dict(compiled.params))
        return found

    async def _ping_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - self._returned_at.get(conn, 0.0) >= IDLE_PING_SECONDS:
            await AsyncConnectionPool.check_connection(conn)
