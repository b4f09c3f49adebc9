"""Recompute the ledger's leaves, byte checks and Merkle tree over spans of entries, in parallel.

Verifying a million entries is CPU-bound Python: a leaf hash, a chain check and a tree node per
entry. The entries are cut into spans that start at multiples of ``SPAN`` (a power of two) and
hold at most ``SPAN`` entries, so a span's perfect subtrees are perfect subtrees of the whole
tree: worker processes scan spans independently, each through its own read-only connection, and
the caller joins their compact ranges in order. A span reports only whether it is sound; naming
the first bad entry is left to the ledger's entry-by-entry walk, which runs only when one is not.

The hash chain is checked only from ``chain_from`` on: the caller passes the size of the latest
signed checkpoint, whose root vouches for every entry before it more strongly than the chain does,
and walks the whole chain itself whenever that root does not match (see ``Ledger.verify``).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from itertools import groupby, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal.audit import merkle

if TYPE_CHECKING:
    from portal.db import Database

GENESIS = bytes(32)
SPAN = 1 << 15
BATCH = 1 << 13  # rows per query, so a worker holds a few megabytes at a time
_SQLITE_MMAP_BYTES = 1 << 31  # SQLite's default ceiling; the mapping is of the database file, not memory

# (a span's rows, one stored leaf) on the table of portal.audit.ledger.LedgerEntry, per driver.
_SQLITE_SQL = (
    "SELECT entry, leaf_hash FROM ledger_entries WHERE seq >= ? AND seq < ? ORDER BY seq",
    "SELECT leaf_hash FROM ledger_entries WHERE seq = ?",
)
_PSYCOPG_SQL = (
    "SELECT entry, leaf_hash FROM ledger_entries WHERE seq >= %s AND seq < %s ORDER BY seq",
    "SELECT leaf_hash FROM ledger_entries WHERE seq = %s",
)


@dataclass(frozen=True)
class RowSource:
    """How a worker process opens its own read-only connection to the main database."""

    sqlite_path: str | None = None
    conninfo: str | None = None

    @classmethod
    def of(cls, db: Database) -> RowSource:
        if db.is_sqlite:
            return cls(sqlite_path=db.engine.url.database)
        return cls(conninfo=db.conninfo())

    def connect(self) -> Any:
        if self.sqlite_path is not None:
            # absolute(): a relative database path (as SQLAlchemy takes it) is relative to the working directory.
            conn = sqlite3.connect(Path(self.sqlite_path).absolute().as_uri() + "?mode=ro", uri=True)
            # Pages read through a memory map, not a read() call each: about 12 % of a span's read time.
            conn.execute(f"PRAGMA mmap_size = {_SQLITE_MMAP_BYTES}")
            return conn
        import psycopg  # imported only where the ledger is on PostgreSQL

        return psycopg.connect(self.conninfo or "", autocommit=True)

    @property
    def _sql(self) -> tuple[str, str]:
        return _SQLITE_SQL if self.sqlite_path is not None else _PSYCOPG_SQL

    def span_rows(self, conn: Any, start: int, end: int) -> tuple[list[bytes], list[bytes]]:
        """The entries and stored leaf hashes of ``start <= seq < end``, in sequence order."""
        rows = _cursor(conn).execute(self._sql[0], (start, end)).fetchall()
        return [row[0] for row in rows], [row[1] for row in rows]

    def stored_leaf(self, conn: Any, seq: int) -> bytes | None:
        row = _cursor(conn).execute(self._sql[1], (seq,)).fetchone()
        return bytes(row[0]) if row else None


def _cursor(conn: Any) -> Any:
    # A binary cursor hands PostgreSQL's bytea over as raw bytes, without decoding hex text.
    return conn.cursor() if isinstance(conn, sqlite3.Connection) else conn.cursor(binary=True)


def chained(first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
    """True when entry i carries sequence ``first_seq + i`` and the leaf hash ``previous[i]``.

    Checked on the bytes, a whole batch per C call where possible, each run of entries in its
    version's layout (the layouts interleave while old and new processes append side by side).
    """
    if entries and entries[0].startswith(_CHAIN_FIRST) and _chained_leading(first_seq, entries, previous):
        return True  # the usual batch: every entry in the current layout
    return _chained_by_layout(first_seq, entries, previous)


_CHAIN_FIRST = b'{"prev":"'  # how entries that lead with their chain fields (version 2 on) begin


def _chained_leading(first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
    """``chained`` for entries that begin ``{"prev":"<64 hex>","seq":<n>,"``, their top-level keys."""
    heads = _CHAIN_FIRST + b"".join(previous).hex("\n", 32).encode().replace(b"\n", _CHAIN_FIRST)
    if b"".join([entry[:73] for entry in entries]) != heads:
        return False
    numbers = ',"\n","seq":'.join(map(str, range(first_seq, first_seq + len(entries))))
    wanted = f'","seq":{numbers},"'.encode().split(b"\n")
    return all(map(bytes.startswith, entries, wanted, repeat(73)))


def _chained_by_layout(first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
    done = 0
    for leads, run in groupby(map(bytes.startswith, entries, repeat(_CHAIN_FIRST))):
        upto = done + len(list(run))
        check = _chained_leading if leads else _chained_sorted
        if not check(first_seq + done, entries[done:upto], previous[done:upto]):
            return False
        done = upto
    return True


def _chained_sorted(first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
    """``chained`` for version 1 entries, canonical JSON with every key sorted.

    The top-level "prev" is the last occurrence of that key (nested details come earlier, and
    string values cannot hold an unescaped quote); after it come only the top-level "purpose",
    "role", "seq", "subject", ... with scalar values.
    """
    at = list(map(bytes.rfind, entries, repeat(b'"prev":"')))
    if -1 in at:
        return False
    written = b"".join([entry[i + 8 : i + 72] for entry, i in zip(entries, at, strict=True)])
    if written != b"".join(previous).hex().encode():
        return False
    # The exact expected text of each entry's "seq" (a comma ends the number), searched for from
    # its "prev" on: one C call per entry instead of locating and cutting out the number.
    numbers = ',\n,"seq":'.join(map(str, range(first_seq, first_seq + len(entries))))
    wanted = f',"seq":{numbers},'.encode().split(b"\n")
    return -1 not in map(bytes.find, entries, wanted, at)


@dataclass
class SpanScan:
    """What one span's entries, from ``start`` on, recompute to."""

    start: int
    sound: bool = True
    before: bytes | None = GENESIS  # the stored leaf of entry start - 1, which entry start must carry
    last_leaf: bytes = GENESIS
    tree: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    cuts: dict[int, merkle.CompactRange] = field(default_factory=dict)  # tree size -> range [start, size)


def scan_span(source: RowSource, start: int, end: int, cut_sizes: tuple[int, ...], chain_from: int = 0) -> SpanScan:
    """Recompute one span; stop at the first batch that is not sound (the walk will name why)."""
    scan = SpanScan(start)
    with closing(source.connect()) as conn:
        prev = source.stored_leaf(conn, start - 1) if start else GENESIS
        scan.before = prev
        if prev is None:
            scan.sound = False
            return scan
        pending = sorted(size for size in cut_sizes if start < size <= end)
        for low in range(start, end, BATCH):
            entries, stored = source.span_rows(conn, low, min(low + BATCH, end))
            leaves = merkle.leaf_hashes(entries)
            if (
                len(entries) != min(BATCH, end - low)
                or leaves != stored
                or not _chained_from(chain_from, low, entries, [prev, *leaves[:-1]])
            ):
                scan.sound = False
                return scan
            while pending and pending[0] <= low + len(leaves):
                size = pending.pop(0)
                scan.tree.extend(leaves[scan.tree.size - (low - start) : size - low])
                scan.cuts[size] = scan.tree.copy()
            scan.tree.extend(leaves[scan.tree.size - (low - start) :])
            prev = leaves[-1]
        scan.last_leaf = prev
    return scan


def _chained_from(chain_from: int, first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
    """``chained`` for the entries of this batch with a sequence number of at least ``chain_from``."""
    skip = min(max(chain_from - first_seq, 0), len(entries))
    return skip == len(entries) or chained(first_seq + skip, entries[skip:], previous[skip:])


@dataclass
class LedgerScan:
    """The whole ledger's recomputed tree and checkpoint roots, when every span is sound."""

    sound: bool
    size: int = 0
    last_leaf: bytes = GENESIS
    roots: dict[int, bytes] = field(default_factory=dict)


def scan_ledger(
    source: RowSource, size: int, cut_sizes: Iterable[int], workers: int, *, chain_from: int = 0
) -> LedgerScan:
    """Scan entries ``0 <= seq < size`` with up to ``workers`` processes; roots at each cut size.

    The chain is checked for the entries from ``chain_from`` on (see the module's docstring).
    """
    cuts = sorted(set(cut_sizes))
    spans = [(low, min(low + SPAN, size)) for low in range(0, size, SPAN)]
    jobs = [(source, low, high, tuple(c for c in cuts if low < c <= high), chain_from) for low, high in spans]
    if workers < 2 or len(jobs) < 2:
        return _join(size, cuts, (scan_span(*job) for job in jobs))
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=_fork_context(), initializer=gc.disable) as pool:
        joined = _join(size, cuts, pool.map(scan_span, *zip(*jobs, strict=True)))
        pool.shutdown(cancel_futures=True)
    return joined


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _fork_context() -> Any:
    # Forked workers start in milliseconds; spawned ones would re-import the whole portal (the CLI's
    # main module) first. They touch nothing inherited but this module and their own connection.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _join(size: int, cuts: Sequence[int], scans: Iterable[SpanScan]) -> LedgerScan:
    tree = merkle.CompactRange()
    roots = {0: merkle.EMPTY_ROOT} if 0 in cuts else {}
    prev = GENESIS
    for scan in scans:
        if not scan.sound or scan.before != prev:
            return LedgerScan(sound=False)
        for cut, part in scan.cuts.items():
            upto = tree.copy()
            upto.append_range(part)
            roots[cut] = upto.root()
        tree.append_range(scan.tree)
        prev = scan.last_leaf
    return LedgerScan(sound=tree.size == size, size=tree.size, last_leaf=prev, roots=roots)
