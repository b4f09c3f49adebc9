"""Reading AuditEvent lines into access facts, a big batch shared with a helper process.

Reading a line (JSON, the FHIR check, the BALP facts) is a third of what ingest spends on an event,
and it holds the interpreter: threads cannot share it. The other core of a small server is mostly
waiting on the database meanwhile, so a helper process reads the second half of a big batch while
the web process reads the first. The helper holds no keys and no connection: lines in, facts out.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import structlog

from portal.access.balp import AccessFacts, BalpError, parse_audit_event
from portal.access.fhir_check import audit_event_passes

log = structlog.get_logger(__name__)

# Below this, sending half a batch to the helper and its facts back costs more than it saves.
MIN_LINES_TO_SHARE = 200
HELPER_TIMEOUT_SECONDS = 60.0
READY = "ready"  # what the helper says once it can read

Read = AccessFacts | str  # the facts of a line, or why it was refused


def read_resource(resource: Any) -> Read:
    """The facts of one decoded AuditEvent, or why it was refused."""
    try:
        return parse_audit_event(resource)
    except BalpError as exc:
        return str(exc)


def read_line(raw: bytes) -> Read:
    """The facts of one line of JSON, or why it was refused. msgspec reads a line in 40 % of
    ``json.loads``' time, and refuses the NaN and Infinity that are not JSON."""
    try:
        resource = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "the line is not JSON"
    return read_resource(resource)


def read_lines(lines: Sequence[bytes]) -> list[Read]:
    return [read_line(raw) for raw in lines]


def _serve(conn: Connection, read: Callable[[Sequence[bytes]], list[Read]]) -> None:
    """The helper's loop: says it is ready once the FHIR check is built, then reads what it is sent
    until the web process closes the pipe."""
    audit_event_passes({})
    conn.send(READY)
    while True:
        try:
            lines = conn.recv()
        except EOFError:
            return
        conn.send(read(lines))


class _Helper:
    """One helper process and the pipe to it, used by one batch at a time."""

    def __init__(self, read: Callable[[Sequence[bytes]], list[Read]]) -> None:
        # spawn, not fork: the web process has threads (a forked child could inherit a held lock).
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, read), name="portal-line-reader", daemon=True)
        self.process.start()
        theirs.close()
        self.busy = threading.Lock()
        self.ready = False

    def is_ready(self) -> bool:
        if not self.ready and self.conn.poll():
            self.ready = self.conn.recv() == READY
        return self.ready

    def share(self, lines: Sequence[bytes], read_here: Callable[[Sequence[bytes]], list[Read]]) -> list[Read]:
        """Read the second half of ``lines`` there while the first is read here (by ``read_here``).

        The lines are sent from this thread, not a queue's: under a busy interpreter a hand-off to
        another thread waits for the interpreter's 5 ms switch interval, twice, which ate the gain."""
        half = len(lines) // 2
        self.conn.send(list(lines[half:]))
        own = read_here(lines[:half])
        if not self.conn.poll(HELPER_TIMEOUT_SECONDS):
            raise TimeoutError("the line reader's helper did not answer")
        shared: list[Read] = self.conn.recv()
        return own + shared

    def close(self) -> None:
        self.conn.close()  # the helper's recv ends: it returns
        self.process.join(timeout=0.5)
        if self.process.is_alive():
            self.process.kill()


class LineReader:
    """Reads a batch's lines here, or, for a big batch, half here and half in a helper process.

    The helper is started by the first big batch, which does not wait for it: until it is ready (well
    under a second), batches are read here alone, as are those that arrive while it is busy with
    another. A helper that dies or hangs is replaced, and its batch is read here: a batch never fails
    because of it."""

    def __init__(self, read: Callable[[Sequence[bytes]], list[Read]] = read_lines) -> None:
        self._read = read  # a module-level function: the helper imports it by name
        self._lock = threading.Lock()
        self._helper: _Helper | None = None

    def read(self, lines: Sequence[bytes]) -> list[Read]:
        helper = self._ready_helper() if len(lines) >= MIN_LINES_TO_SHARE else None
        if helper is None or not helper.busy.acquire(blocking=False):
            return self._read(lines)
        try:
            return helper.share(lines, self._read)
        except (OSError, EOFError, TimeoutError) as exc:
            log.warning("access.reader_helper_failed", error=type(exc).__name__)
            self._discard(helper)
            return self._read(lines)
        finally:
            helper.busy.release()

    def close(self) -> None:
        with self._lock:
            helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()

    def _ready_helper(self) -> _Helper | None:
        with self._lock:
            if self._helper is None:
                self._helper = _Helper(self._read)
                return None
            helper = self._helper
            try:
                if helper.is_ready() and helper.process.is_alive():
                    return helper
                if helper.process.is_alive():
                    return None
            except (OSError, EOFError):
                pass
        log.warning("access.reader_helper_failed", error="the helper process ended")
        self._discard(helper)
        return None

    def _discard(self, helper: _Helper) -> None:
        with self._lock:
            if self._helper is helper:
                self._helper = None
        helper.close()
