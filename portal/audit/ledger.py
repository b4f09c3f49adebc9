"""The append-only audit ledger: an RFC 9162 Merkle tree over canonical JSON entries.

Entries hold no patient data: pseudonymous ids, actor, action, purpose, object, UTC time and
hashes of payloads, so an erasure never breaks a proof. Each entry also carries the leaf hash of
the one before it, so an edited, inserted, deleted or moved row is named exactly by
``verify``; signed checkpoints (C2SP tlog-checkpoint, Ed25519) pin the whole history, so even a
consistent rewrite of the tail is caught against a checkpoint a regulator kept.

The database refuses UPDATE and DELETE on the ledger tables (triggers; see the migration).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    BigInteger,
    Connection,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from portal.audit import merkle
from portal.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string, verify_checkpoint
from portal.audit.scan import GENESIS, RowSource, chained, default_workers, scan_ledger
from portal.db import IDLE_PING_SECONDS, Base, Database, UTCDateTime, insert_rows, utcnow

ENTRY_VERSION = 2
READ_BATCH = 50_000


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_subject_seq", "subject", "seq"),)

    # On SQLite an INTEGER primary key is the table's own row key: a BIGINT one is an index beside it,
    # one more to write for every entry and to look through for every span a verification reads.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # Copies of entry fields to select by (a patient's security activity); what is shown is the entry
    # itself. Every look-up by action is also by subject, so the subject index serves it.
    subject: Mapped[str | None] = mapped_column(String(36), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerHead(Base):
    """One row: the next sequence number and the last leaf hash. Locked by each append."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    last_leaf: Mapped[bytes] = mapped_column(LargeBinary(32))


LEDGER_ENTRIES = cast(Table, LedgerEntry.__table__)
_HEAD_IF_NONE = text(
    "INSERT INTO ledger_head (id, size, last_leaf) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING"
)
_HEAD_FOR_UPDATE = select(LedgerHead.size, LedgerHead.last_leaf).where(LedgerHead.id == 1).with_for_update()


def make_head(conn: Connection) -> None:
    """The head of an empty ledger, unless there is one (made by a concurrent transaction: this waits for it)."""
    conn.execute(_HEAD_IF_NONE, {"genesis": GENESIS})


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    # The compact range at this size, so the next checkpoint hashes only the new leaves.
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class AuditEvent:
    """What happened, by whom, to what — never the patient data itself."""

    action: str
    actor: str
    role: str | None = None
    subject: str | None = None
    object: str | None = None
    purpose: str | None = None
    outcome: str = "success"
    details: Mapping[str, str | int | bool | None] = field(default_factory=dict)
    payload: Any = None


def payload_hash(payload: Any) -> str:
    """SHA-256 of a payload's canonical JSON: proves what was done without keeping it."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no spaces, UTF-8 text: the bytes ``json.dumps(value, sort_keys=True, separators=(",",
    ":"), ensure_ascii=False)`` gives for text, integers, booleans and null (a test pins this), written by
    msgspec in a tenth of the time (0.5 against 4.9 µs an entry). Datetimes are RFC 3339 text, and other
    values JSON lacks are written as ``str()`` gives them."""
    return _CANONICAL_JSON.encode(value)


_CANONICAL_JSON = msgspec.json.Encoder(order="sorted", enc_hook=str)


def encode_entry(seq: int, when: datetime, prev: bytes, event: AuditEvent) -> bytes:
    return entry_head(prev.hex(), seq) + entry_tail(entry_time(when), event)


def entry_time(when: datetime) -> str:
    """An entry's time as it is written (the entries of one append share it)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_tail(stamp: str, event: AuditEvent) -> bytes:
    """An entry's bytes after its head: the fields that do not depend on the ledger's state."""
    document: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "time": stamp,
        "action": event.action,
        "actor": event.actor,
        "role": event.role,
        "subject": event.subject,
        "object": event.object,
        "purpose": event.purpose,
        "outcome": event.outcome,
        "details": dict(event.details),
        "payload_sha256": payload_hash(event.payload) if event.payload is not None else None,
    }
    return canonical_json(document)[1:]


def entry_head(prev_hex: str, seq: int) -> bytes:
    """The chain fields, at fixed places (``portal.audit.scan.chained`` slices them; the database
    function ``portal_ledger_append``, migration 0015, writes them the same way)."""
    return b'{"prev":"%s","seq":%d,' % (prev_hex.encode(), seq)


def entry_bytes(document: Mapping[str, Any]) -> bytes:
    """An entry's bytes: "prev" and "seq" first, then the other keys sorted, as canonical JSON.

    Version 1 entries sorted every key. Leading with the chain fields puts them at fixed places, so
    verification checks a million of them by slicing bytes (``portal.audit.scan.chained``).
    """
    rest = {key: value for key, value in document.items() if key not in ("prev", "seq")}
    return entry_head(document["prev"], document["seq"]) + canonical_json(rest)[1:]


@dataclass(frozen=True)
class _HeadSnapshot:
    size: int
    last_leaf: bytes
    top_seq: int | None  # the highest sequence number stored, at the same moment

    def stored_entries(self) -> int:
        return 0 if self.top_seq is None else self.top_seq + 1

    def agrees_with(self, entries: int, last_leaf: bytes) -> bool:
        return self.size == entries == self.stored_entries() and self.last_leaf == last_leaf


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    """Owns the ledger tables: append, checkpoint, prove, verify."""

    def __init__(
        self,
        db: Database,
        signing_key: Callable[[], Ed25519PrivateKey],
        origin: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self._signing_key = signing_key
        self.origin = f"{urlsplit(origin).hostname or 'portal'}/audit-ledger"
        self.clock = clock
        self._group: _GroupCommitter | None = None
        self._group_lock = threading.Lock()

    # ------------------------------------------------------------------ appending

    def append(self, session: Session, event: AuditEvent) -> int:
        """Append one entry in the caller's transaction; returns its sequence number."""
        return self.append_many(session, [event])[0]

    def append_many(self, session: Session, events: Sequence[AuditEvent]) -> list[int]:
        # Core statements on the session's connection: the ORM's unit of work costs more than the
        # appending itself on the decision API's path, which appends a handful of entries at a time.
        if not events:
            return []
        conn = session.connection()
        head = conn.execute(_HEAD_FOR_UPDATE).first()
        if head is None:
            # The first append ever. Two at once would both find no row to lock and number their entries
            # from 0: the head is made (or, made by the other, waited for) and then locked like any other.
            make_head(conn)
            head = conn.execute(_HEAD_FOR_UPDATE).one()
        first, prev = head.size, head.last_leaf
        leaves: list[bytes] = []
        # One COPY (or executemany), not a statement per entry: ingest appends thousands at once. On
        # PostgreSQL each entry is sent as soon as it is made, so the server stores it meanwhile.
        insert_rows(conn, LEDGER_ENTRIES, _entry_rows(events, first, prev, self.clock(), leaves))
        conn.execute(
            update(LedgerHead).where(LedgerHead.id == 1).values(size=first + len(leaves), last_leaf=leaves[-1])
        )
        return list(range(first, first + len(leaves)))

    def record(self, event: AuditEvent) -> int:
        """Append in a transaction of its own (for events with no other state change)."""
        with self.db.write() as session:
            return self.append(session, event)

    def record_grouped(self, event: AuditEvent) -> int:
        """Like ``record``, but events from concurrent callers share one transaction (group commit).

        The caller still returns only once its entry is committed, so nothing is answered without
        its audit record; many callers pay for one head-row lock and one commit instead of one each.
        """
        return self._group_committer().submit(event)

    async def record_grouped_async(self, event: AuditEvent) -> int:
        """``record_grouped`` for a caller on the event loop: it awaits the commit, holding no thread."""
        committed = asyncio.wrap_future(self._group_committer().enqueue(event))
        async with asyncio.timeout(_GroupCommitter.TIMEOUT_SECONDS):
            return await committed

    def close(self) -> None:
        """Commit what waits in the group committer, then stop it (a process shutting down)."""
        with self._group_lock:
            group, self._group = self._group, None
        if group is not None:
            group.close()

    def _group_committer(self) -> _GroupCommitter:
        if self._group is None:
            with self._group_lock:
                if self._group is None:
                    self._group = _GroupCommitter(self)
        return self._group

    # ------------------------------------------------------------------ reading

    def size(self) -> int:
        with self.db.read() as session:
            head = session.get(LedgerHead, 1)
            return head.size if head else 0

    def entries_for_subject(
        self, subject: str, *, actions: Iterable[str] | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        query = select(LedgerEntry.entry).where(LedgerEntry.subject == subject)
        if actions is not None:
            query = query.where(LedgerEntry.action.in_(list(actions)))
        with self.db.read() as session:
            rows = session.scalars(query.order_by(LedgerEntry.seq.desc()).limit(limit)).all()
        return [json.loads(row) for row in rows]

    def leaf_hashes(self, tree_size: int | None = None, start: int = 0) -> list[bytes]:
        return [leaf for _seq, leaf in self._rows(LedgerEntry.leaf_hash, start=start, end=tree_size)]

    def _rows(self, *columns: Any, start: int = 0, end: int | None = None) -> Iterator[Any]:
        """(seq, *columns) in sequence order, read in batches so a million rows stay cheap."""
        last = start - 1
        while True:
            query = select(LedgerEntry.seq, *columns).where(LedgerEntry.seq > last)
            if end is not None:
                query = query.where(LedgerEntry.seq < end)
            with self.db.engine.connect() as conn:
                rows = conn.execute(query.order_by(LedgerEntry.seq).limit(READ_BATCH)).all()
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    # ------------------------------------------------------------------ checkpoints and proofs

    def verifier_key(self) -> str:
        return verifier_key_string(self.origin, self._signing_key().public_key())

    def checkpoint(self) -> LedgerCheckpoint:
        """Sign the current tree head (idempotent for an unchanged tree)."""
        with self.db.read() as session:
            latest = session.scalars(
                select(LedgerCheckpoint).order_by(LedgerCheckpoint.tree_size.desc()).limit(1)
            ).first()
        tree = merkle.CompactRange.from_bytes(latest.frontier) if latest else merkle.CompactRange()
        start = tree.size
        size = self.size()
        if latest is not None and latest.tree_size == size:
            return latest
        tree.extend(self.leaf_hashes(size, start=start))
        now = self.clock()
        body = Checkpoint(origin=self.origin, tree_size=size, root_hash=tree.root()).with_timestamp(now)
        note = sign_checkpoint(body, self.origin, self._signing_key()).decode()
        row = LedgerCheckpoint(
            tree_size=size, root_hash=tree.root(), note=note, frontier=tree.to_bytes(), created_at=now
        )
        try:
            with self.db.write() as session:
                if session.get(LedgerCheckpoint, size) is None:
                    session.add(row)
        except IntegrityError:
            # Another process signed the same tree size at the same moment: theirs stands.
            with self.db.read() as session:
                stored = session.get(LedgerCheckpoint, size)
            assert stored is not None
            return stored
        return row

    def checkpoints(self) -> list[LedgerCheckpoint]:
        with self.db.read() as session:
            return list(session.scalars(select(LedgerCheckpoint).order_by(LedgerCheckpoint.tree_size)))

    def inclusion_proofs(self, seqs: Iterable[int], tree_size: int) -> dict[int, list[bytes]]:
        tree = merkle.MerkleTree(self.leaf_hashes(tree_size))
        return {seq: tree.inclusion_proof(seq, tree_size) for seq in seqs}

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof(self.leaf_hashes(new_size), old_size, new_size)

    # ------------------------------------------------------------------ verification

    def verify(self, workers: int | None = None) -> VerifyReport:
        """Recompute everything from the rows; name the first bad entry and any bad checkpoint.

        Spans of entries are recomputed in parallel (``portal.audit.scan``). The hash chain is
        checked after the latest checkpoint only: the entries before it must hash to its signed
        root, which an attacker without the signing key cannot forge, while an unkeyed chain can
        be recomputed by anyone who can write the rows. Only when something does not add up
        (a span, the head or any checkpoint) is the ledger walked again, entry by entry and the
        whole chain with it, to name what is wrong.
        """
        # Checkpoints are read before the head, so none is newer than the entries being verified.
        checkpoints = self.checkpoints()
        head = self._head_snapshot()
        vouched = max((c.tree_size for c in checkpoints), default=0)
        scan = scan_ledger(
            RowSource.of(self.db),
            head.size,
            [c.tree_size for c in checkpoints],
            default_workers() if workers is None else workers,
            chain_from=vouched,
        )
        if not (scan.sound and head.agrees_with(scan.size, scan.last_leaf)):
            return self._walk(checkpoints, head)
        report = VerifyReport(entries=scan.size)
        report.checks.append(
            f"recomputed {scan.size} leaf hashes, and the hash chain of the entries no signed checkpoint covers "
            f"(from entry {vouched} on)"
        )
        self._verify_checkpoints(checkpoints, scan.roots, report)
        return self._walk(checkpoints, head) if report.problems else report

    def _head_snapshot(self) -> _HeadSnapshot:
        """The head row and the highest stored sequence number, read in one statement."""
        top = select(func.max(LedgerEntry.seq)).scalar_subquery()
        with self.db.read() as session:
            row = session.execute(select(LedgerHead.size, LedgerHead.last_leaf, top).where(LedgerHead.id == 1)).first()
        if row is None:
            return _HeadSnapshot(0, GENESIS, None)
        return _HeadSnapshot(row[0], bytes(row[1]), row[2])

    def _walk(self, checkpoints: list[LedgerCheckpoint], head: _HeadSnapshot) -> VerifyReport:
        """Verify batch by batch, walking a batch that fails entry by entry to name its first bad entry."""
        report = VerifyReport()
        pending = sorted(c.tree_size for c in checkpoints)
        tree = merkle.CompactRange()
        prev = GENESIS
        roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT} if pending and pending[0] == 0 else {}
        for batch in self._batches(LedgerEntry.entry, LedgerEntry.leaf_hash):
            entries = [bytes(row[1]) for row in batch]
            leaves = merkle.leaf_hashes(entries)
            if not report.problems and not _batch_is_sound(tree.size, batch, entries, leaves, prev):
                report.problems.append(_first_problem(tree.size, batch, leaves, prev))
            start = tree.size
            while pending and pending[0] <= start + len(leaves):
                size = pending.pop(0)
                tree.extend(leaves[tree.size - start : size - start])
                roots[size] = tree.root()
            tree.extend(leaves[tree.size - start :])
            prev = leaves[-1]
        report.entries = tree.size
        stored = head.stored_entries()
        if not report.problems:
            if head.size > stored:
                report.problems.append(f"entries {stored} to {head.size - 1} are missing (deleted from the end)")
            elif head.size != stored:
                report.problems.append(f"the ledger head says {head.size} entries but {stored} are stored")
            elif head.last_leaf != prev:
                report.problems.append(
                    f"the ledger head's last leaf hash is not entry {head.size - 1}'s (the head was altered)"
                )
        report.checks.append(f"recomputed {tree.size} leaf hashes and the hash chain")
        self._verify_checkpoints(checkpoints, roots, report)
        return report

    def _batches(self, *columns: Any) -> Iterator[list[Any]]:
        """Rows in sequence order, READ_BATCH at a time, over one connection."""
        last = -1
        with self.db.engine.connect() as conn:
            while True:
                query = select(LedgerEntry.seq, *columns).where(LedgerEntry.seq > last)
                rows = conn.execute(query.order_by(LedgerEntry.seq).limit(READ_BATCH)).all()
                if not rows:
                    return
                yield list(rows)
                last = rows[-1][0]

    def _verify_checkpoints(
        self, checkpoints: list[LedgerCheckpoint], roots: dict[int, bytes], report: VerifyReport
    ) -> None:
        key = self.verifier_key()
        for row in checkpoints:
            try:
                signed = verify_checkpoint(row.note.encode(), key, origin=self.origin)
            except ValueError as exc:
                report.problems.append(f"checkpoint at size {row.tree_size}: bad signature ({exc})")
                continue
            if signed.tree_size != row.tree_size or signed.root_hash != row.root_hash:
                report.problems.append(f"checkpoint at size {row.tree_size}: stored values differ from the signed note")
            elif roots.get(row.tree_size) != signed.root_hash:
                report.problems.append(
                    f"checkpoint at size {row.tree_size}: the entries no longer hash to its signed root "
                    "(history was rewritten)"
                )
            report.checkpoints += 1
        report.checks.append(f"verified {report.checkpoints} signed checkpoints against recomputed roots")


def _entry_rows(
    events: Sequence[AuditEvent], first: int, prev: bytes, now: datetime, leaves: list[bytes]
) -> Iterator[dict[str, Any]]:
    """The ledger_entries rows of ``events``, numbered from ``first`` and chained from ``prev``; each
    entry's leaf hash is also appended to ``leaves``."""
    stamp = entry_time(now)
    for seq, event in enumerate(events, start=first):
        entry = entry_head(prev.hex(), seq) + entry_tail(stamp, event)
        prev = merkle.leaf_hash(entry)
        leaves.append(prev)
        yield {
            "seq": seq,
            "entry": entry,
            "leaf_hash": prev,
            "subject": event.subject,
            "action": event.action,
            "created_at": now,
        }


class _GroupCommitter:
    """One thread that appends queued events in batches and wakes each caller when its batch commits."""

    MAX_BATCH = 500
    TIMEOUT_SECONDS = 30.0
    # Under load, commits are spaced at least this far apart so that each carries more entries: a
    # transaction costs about 0.3 ms of CPU here, and more in the database, whatever its size. With the
    # decision API under load (2 web processes, 32 clients) commits went from 1.6 to about 5 entries,
    # and throughput from 1,307 to 1,650-1,730 decisions/s. A ledger that sat idle for this long
    # commits at once, so a lone call waits for nothing.
    MIN_COMMIT_INTERVAL_SECONDS = 0.004

    def __init__(self, ledger: Ledger) -> None:
        self._appender: _SessionAppender | _DatabaseAppender = (
            _SessionAppender(ledger) if ledger.db.is_sqlite else _DatabaseAppender(ledger)
        )
        # None asks the thread to stop.
        self._queue: queue.Queue[tuple[AuditEvent, Future[int]] | None] = queue.Queue()
        self._last_commit_at = 0.0
        self._thread = threading.Thread(target=self._run, name="ledger-group-commit", daemon=True)
        self._thread.start()

    def submit(self, event: AuditEvent) -> int:
        return self.enqueue(event).result(timeout=self.TIMEOUT_SECONDS)

    def enqueue(self, event: AuditEvent) -> Future[int]:
        """The future completes with the entry's sequence number once its batch has committed."""
        done: Future[int] = Future()
        self._queue.put((event, done))
        return done

    def close(self) -> None:
        """Append what is queued, then stop the thread and close its connection (waits for both)."""
        self._queue.put(None)
        self._thread.join(timeout=self.TIMEOUT_SECONDS)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                self._commit(batch)
                self._last_commit_at = time.monotonic()
        self._appender.close()

    def _next_batch(self) -> tuple[list[tuple[AuditEvent, Future[int]]], bool]:
        """What is queued (waiting for at least one), up to MAX_BATCH; and whether to stop after it."""
        batch: list[tuple[AuditEvent, Future[int]]] = []
        item = self._queue.get()
        if item is not None:
            self._wait_for_commit_interval()
        while item is not None:
            batch.append(item)
            if len(batch) == self.MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _wait_for_commit_interval(self) -> None:
        wait = self._last_commit_at + self.MIN_COMMIT_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _commit(self, batch: list[tuple[AuditEvent, Future[int]]]) -> None:
        # A caller that gave up (its wait timed out and cancelled the future) is not answered, but
        # its check still happened and is still recorded.
        waiting = [done.set_running_or_notify_cancel() for _event, done in batch]
        try:
            seqs = self._appender.append([event for event, _done in batch])
        except Exception as exc:
            for (_event, done), answer in zip(batch, waiting, strict=True):
                if answer:
                    done.set_exception(exc)
            return
        for (_event, done), answer, seq in zip(batch, waiting, seqs, strict=True):
            if answer:
                done.set_result(seq)


class _SessionAppender:
    """Appends a batch in a transaction of its own, through SQLAlchemy (``Ledger.append_many``)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        with self._ledger.db.write() as session:
            return self._ledger.append_many(session, events)

    def close(self) -> None:
        """Nothing of its own to close: its sessions use the engine's pool."""


# Migration 0015; one statement, its own transaction on an autocommit connection.
_APPEND_IN_DATABASE = "SELECT portal_ledger_append(%s::bytea[], %s::text[], %s::text[], %s)"


class _DatabaseAppender:
    """Appends a batch on a PostgreSQL connection of its own, with one call of the database function
    ``portal_ledger_append``, which puts each entry's chain fields in front, hashes it and moves the head.

    The same transaction as ``append_many`` (lock the head, insert the entries chained from it, move it)
    in one round trip: about 0.14 ms of CPU here for a batch of five entries, against 0.32 ms for the
    same statements sent from here in pipeline mode and 1 ms through SQLAlchemy (``time.thread_time``).
    The decision API appends a few entries per transaction, so this was most of its ledger cost.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._conn: psycopg.Connection[Any] | None = None
        self._used_at = 0.0

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        conn = self._live_connection()
        try:
            return self._append_on(conn, events)
        except BaseException:
            # The call is its own transaction: unless the connection died after the database committed
            # it, nothing of the batch is stored. Either way its callers are told it failed, and a
            # connection in an unknown state is not reused.
            self.close()
            raise
        finally:
            self._used_at = time.monotonic()

    def _live_connection(self) -> psycopg.Connection[Any]:
        """The connection, pinged first if it sat idle (as the pools do), so a database restart costs no
        batch: a dead one is replaced."""
        if self._conn is not None and time.monotonic() - self._used_at >= IDLE_PING_SECONDS:
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self.close()
        return self._conn or self._connect()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        # The database function would make a missing head itself and collide with a first append under way
        # elsewhere: the head is made here first, waiting for that append.
        with self._ledger.db.engine.begin() as conn:
            make_head(conn)
        self._conn = psycopg.connect(self._ledger.db.conninfo(), autocommit=True)
        return self._conn

    def _append_on(self, conn: psycopg.Connection[Any], events: Sequence[AuditEvent]) -> list[int]:
        now = self._ledger.clock()
        stamp = entry_time(now)
        tails = [entry_tail(stamp, event) for event in events]
        subjects = [event.subject for event in events]
        actions = [event.action for event in events]
        row = conn.execute(_APPEND_IN_DATABASE, (tails, subjects, actions, now), prepare=True).fetchone()
        assert row is not None  # a function call answers one row
        first = int(row[0])
        return list(range(first, first + len(events)))


def _batch_is_sound(first: int, rows: list[Any], entries: list[bytes], leaves: list[bytes], prev: bytes) -> bool:
    """True when every row of the batch is exactly where and what it should be (checked on the bytes)."""
    if [row[0] for row in rows] != list(range(first, first + len(rows))):
        return False
    if leaves != [bytes(row[2]) for row in rows]:
        return False
    return chained(first, entries, [prev, *leaves[:-1]])


def _first_problem(first: int, rows: list[Any], leaves: list[bytes], prev: bytes) -> str:
    """Walk a batch that failed the fast check, entry by entry, to name its first bad entry."""
    expected = first
    for (seq, entry, stored_leaf), leaf in zip(rows, leaves, strict=True):
        problem = _entry_problem(expected, seq, bytes(entry), bytes(stored_leaf), prev)
        if problem:
            return problem
        expected, prev = expected + 1, leaf
    return f"entries {first} to {expected - 1} do not verify"


def _entry_problem(expected_seq: int, seq: int, entry: bytes, stored_leaf: bytes, prev: bytes) -> str | None:
    if seq != expected_seq:
        kind = "missing (deleted)" if seq > expected_seq else "duplicated"
        return f"entry {expected_seq} is {kind}: found sequence {seq} next"
    try:
        document = json.loads(entry)
    except ValueError:
        return f"entry {seq} is not valid JSON (edited)"
    if document.get("seq") != seq:
        return f"entry {seq} carries sequence {document.get('seq')}: entries were inserted, removed or reordered here"
    if merkle.leaf_hash(entry) != stored_leaf:
        return f"entry {seq} does not match its stored leaf hash (edited)"
    if document.get("prev") != prev.hex():
        return f"the chain breaks at entry {seq}: entry {seq - 1} was altered, or an entry was inserted before {seq}"
    return None
