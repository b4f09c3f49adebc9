"""Two transactions that overlap on purpose: the first waits just before committing, with all it wrote
sent, until the second is waiting for its rows (PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from portal.container import Portal

T = TypeVar("T")
U = TypeVar("U")
FIRST = "first"  # the prefix of the thread names whose commits are held
WAIT_SECONDS = 30.0


class HeldCommit:
    def __init__(self, database: Engine) -> None:
        self.database = database.url
        self.reached = threading.Event()
        self.released = threading.Event()

    def hold(self, session: Session) -> None:
        ours = threading.current_thread().name.startswith(FIRST) and session.get_bind().engine.url == self.database
        if ours and not self.reached.is_set():
            session.flush()
            self.reached.set()
            self.released.wait(WAIT_SECONDS)


@contextmanager
def first_commit_held(database: Engine) -> Iterator[HeldCommit]:
    """Holds the first commit in ``database`` of a thread named ``first…`` (not one in the key store) until
    ``released`` is set (set on leaving, too)."""
    held = HeldCommit(database)
    event.listen(Session, "before_commit", held.hold)
    try:
        yield held
    finally:
        held.released.set()
        event.remove(Session, "before_commit", held.hold)


def until_a_transaction_waits_for_a_lock(portal: Portal) -> None:
    waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with portal.db.engine.connect() as conn:
            if conn.scalar(waiting):
                return
        time.sleep(0.02)
    raise AssertionError("the second transaction never waited for the first's rows")


def overlapping(portal: Portal, first: Callable[[], T], second: Callable[[], U]) -> tuple[Future[T], Future[U]]:
    """Runs ``first`` up to its commit in the main database, then ``second`` until it waits for the first's
    rows, then lets the first commit; returns both once done (``result()`` gives a value or raises)."""
    with (
        first_commit_held(portal.db.engine) as held,
        ThreadPoolExecutor(1, FIRST) as first_pool,
        ThreadPoolExecutor(1, "second") as second_pool,
    ):
        try:
            first_done = first_pool.submit(first)
            if not held.reached.wait(WAIT_SECONDS):
                raise AssertionError("the first transaction never reached its commit")
            second_done = second_pool.submit(second)
            until_a_transaction_waits_for_a_lock(portal)
        finally:
            held.released.set()  # before the pools wait for their threads, which may wait on the first
    return first_done, second_done
