"""The audit ledger: append-only in the database, provable, and every kind of tampering named."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from portal.audit import merkle, scan
from portal.audit.checkpoint import verify_checkpoint
from portal.audit.ledger import (
    AuditEvent,
    Ledger,
    LedgerEntry,
    _GroupCommitter,
    canonical_json,
    encode_entry,
    entry_bytes,
)
from portal.container import Portal
from tests.support.concurrency import overlapping


def _fill(portal: Portal, count: int) -> None:
    with portal.db.write() as session:
        portal.ledger.append_many(
            session,
            [
                AuditEvent(action="records.read", actor=f"staff:{i % 3}", subject=f"patient-{i % 5}", purpose="TREAT")
                for i in range(count)
            ],
        )


def test_appends_are_sequenced_and_chained(portal: Portal) -> None:
    _fill(portal, 5)
    seq = portal.ledger.record(AuditEvent(action="auth.signin", actor="patient:p1", subject="p1"))
    assert seq == 5 and portal.ledger.size() == 6
    entries = portal.ledger.entries_for_subject("p1")
    assert entries[0]["action"] == "auth.signin" and entries[0]["time"].endswith("Z")


def test_payloads_are_hashed_not_stored(portal: Portal) -> None:
    portal.ledger.record(
        AuditEvent(action="consent.grant", actor="patient:p1", subject="p1", payload={"note": "Zebulon-Secret"})
    )
    with portal.db.engine.connect() as conn:
        stored = b"".join(bytes(row[0]) for row in conn.execute(text("SELECT entry FROM ledger_entries")))
    assert b"Zebulon-Secret" not in stored
    assert json.loads(stored)["payload_sha256"]


@pytest.mark.parametrize("statement", ["UPDATE ledger_entries SET action = 'x'", "DELETE FROM ledger_entries"])
def test_database_refuses_update_and_delete(portal: Portal, statement: str) -> None:
    _fill(portal, 3)
    with pytest.raises(DatabaseError, match="append-only"), portal.db.engine.begin() as conn:
        conn.execute(text(statement))
    assert portal.ledger.size() == 3


def test_checkpoint_is_signed_and_proofs_verify(portal: Portal) -> None:
    _fill(portal, 37)
    first = portal.ledger.checkpoint()
    _fill(portal, 20)
    second = portal.ledger.checkpoint()
    key = portal.ledger.verifier_key()
    signed = verify_checkpoint(second.note.encode(), key, origin=portal.ledger.origin)
    assert signed.tree_size == 57 and signed.timestamp is not None
    leaves = portal.ledger.leaf_hashes()
    proofs = portal.ledger.inclusion_proofs([0, 36, 56], 57)
    for seq, proof in proofs.items():
        assert merkle.verify_inclusion(leaves[seq], seq, 57, proof, signed.root_hash)
    consistency = portal.ledger.consistency_proof(37, 57)
    assert merkle.verify_consistency(37, 57, first.root_hash, second.root_hash, consistency)
    assert portal.ledger.checkpoint().tree_size == 57, "no new checkpoint for an unchanged tree"


def test_untouched_ledger_verifies(portal: Portal) -> None:
    _fill(portal, 30)
    portal.ledger.checkpoint()
    _fill(portal, 5)
    report = portal.ledger.verify()
    assert report.ok, report.problems
    assert report.entries == 35 and report.checkpoints == 1


@contextmanager
def _triggers_off(portal: Portal) -> Iterator[None]:
    """Simulate an attacker with raw database access who disables the append-only triggers."""
    pg = not portal.db.is_sqlite
    with portal.db.engine.begin() as conn:
        if pg:
            conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER ledger_entries_no_update"))
            conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))
    yield
    if pg:
        with portal.db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE ledger_entries ENABLE TRIGGER USER"))


def _entry(portal: Portal, seq: int) -> dict[str, object]:
    with portal.db.engine.connect() as conn:
        raw = conn.execute(text("SELECT entry FROM ledger_entries WHERE seq = :s"), {"s": seq}).scalar_one()
    return dict(json.loads(bytes(raw)))


def _problems(portal: Portal) -> list[str]:
    report = portal.ledger.verify()
    assert not report.ok
    return report.problems


def test_edited_entry_is_named(portal: Portal) -> None:
    _fill(portal, 20)
    portal.ledger.checkpoint()
    doc = _entry(portal, 7)
    doc["actor"] = "staff:someone-else"
    edited = entry_bytes(doc)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_entries SET entry = :e WHERE seq = 7"), {"e": edited})
    assert _problems(portal)[0] == "entry 7 does not match its stored leaf hash (edited)"


def _rewrite_with_its_leaf(portal: Portal, seq: int, field: str, value: str) -> None:
    """Edit one entry and store the matching leaf hash, as a careful attacker would."""
    doc = _entry(portal, seq)
    doc[field] = value
    edited = entry_bytes(doc)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE ledger_entries SET entry = :e, leaf_hash = :h WHERE seq = :s"),
            {"e": edited, "h": merkle.leaf_hash(edited), "s": seq},
        )


def test_edit_with_recomputed_leaf_is_named_by_the_chain_and_the_checkpoint(portal: Portal) -> None:
    _fill(portal, 20)
    portal.ledger.checkpoint()
    _rewrite_with_its_leaf(portal, 7, "purpose", "HMARKT")
    problems = _problems(portal)
    assert problems[0].startswith("the chain breaks at entry 8: entry 7 was altered")
    assert any("history was rewritten" in p for p in problems)


def test_deleted_entry_is_named(portal: Portal) -> None:
    _fill(portal, 20)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_entries WHERE seq = 12"))
    assert _problems(portal)[0] == "entry 12 is missing (deleted): found sequence 13 next"


def test_inserted_entry_is_named(portal: Portal) -> None:
    _fill(portal, 20)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        for seq in range(19, 9, -1):
            conn.execute(text("UPDATE ledger_entries SET seq = seq + 1 WHERE seq = :s"), {"s": seq})
        forged = dict(_entry(portal, 9))
        forged["seq"] = 10
        forged["prev"] = merkle.leaf_hash(entry_bytes(_entry(portal, 9))).hex()
        body = entry_bytes(forged)
        conn.execute(
            text(
                "INSERT INTO ledger_entries (seq, entry, leaf_hash, subject, action, created_at) "
                "SELECT 10, :e, :h, subject, action, created_at FROM ledger_entries WHERE seq = 9"
            ),
            {"e": body, "h": merkle.leaf_hash(body)},
        )
    assert _problems(portal)[0] == "entry 11 carries sequence 10: entries were inserted, removed or reordered here"


def test_reordered_entries_are_named(portal: Portal) -> None:
    _fill(portal, 20)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_entries SET seq = -1 WHERE seq = 4"))
        conn.execute(text("UPDATE ledger_entries SET seq = 4 WHERE seq = 5"))
        conn.execute(text("UPDATE ledger_entries SET seq = 5 WHERE seq = -1"))
    assert _problems(portal)[0] == "entry 4 carries sequence 5: entries were inserted, removed or reordered here"


def test_forged_checkpoint_signature_is_caught(portal: Portal) -> None:
    _fill(portal, 10)
    row = portal.ledger.checkpoint()
    forged = row.note.replace(row.note.splitlines()[1], "11")
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        if not portal.db.is_sqlite:
            conn.execute(text("ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER ledger_checkpoints_no_update"))
        conn.execute(text("UPDATE ledger_checkpoints SET note = :n"), {"n": forged})
    assert any("bad signature" in p for p in _problems(portal))


def test_entries_deleted_from_the_end_are_named(portal: Portal) -> None:
    _fill(portal, 10)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_entries WHERE seq >= 8"))
    assert _problems(portal)[0] == "entries 8 to 9 are missing (deleted from the end)"


def test_a_caller_that_gave_up_waiting_neither_stops_the_group_commit_nor_loses_its_entry(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision API awaits its group-committed entry with a timeout; a timed-out wait cancels its
    future. The committer must skip answering it (answering a cancelled future raises), keep running for
    everyone else, and still record the check."""
    gate, appending = threading.Event(), threading.Event()
    commit = _GroupCommitter._commit

    def held_first_batch(self: _GroupCommitter, batch: list[tuple[AuditEvent, Future[int]]]) -> None:
        appending.set()
        assert gate.wait(10)
        commit(self, batch)

    monkeypatch.setattr(_GroupCommitter, "_commit", held_first_batch)
    first = threading.Thread(target=portal.ledger.record_grouped, args=(AuditEvent(action="test.first", actor="t"),))
    first.start()
    assert appending.wait(10)  # the committer is inside the first batch: the next event waits in its queue

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await portal.ledger.record_grouped_async(AuditEvent(action="test.abandoned", actor="t"))

    with start_blocking_portal() as loop:  # its own loop, whatever else runs in this thread
        loop.call(give_up)
    monkeypatch.setattr(_GroupCommitter, "_commit", commit)
    gate.set()
    first.join(10)
    later = portal.ledger.record_grouped(AuditEvent(action="test.later", actor="t"))
    actions = [json.loads(row)["action"] for row in _entries(portal)]
    assert actions[-3:] == ["test.first", "test.abandoned", "test.later"]
    assert later == len(actions) - 1


def test_under_load_the_group_commit_spaces_its_commits_and_an_idle_one_commits_at_once(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries that arrive within the commit interval of the last commit share the next transaction;
    an entry after a quiet spell is not held back."""
    interval = 0.5
    monkeypatch.setattr(_GroupCommitter, "MIN_COMMIT_INTERVAL_SECONDS", interval)
    sizes: list[int] = []
    commit = _GroupCommitter._commit

    def counted(self: _GroupCommitter, batch: list[tuple[AuditEvent, Future[int]]]) -> None:
        sizes.append(len(batch))
        commit(self, batch)

    monkeypatch.setattr(_GroupCommitter, "_commit", counted)
    time.sleep(interval)  # whatever the fixture committed is now a quiet spell ago
    started = time.monotonic()
    portal.ledger.record_grouped(AuditEvent(action="test.lone", actor="t"))
    assert time.monotonic() - started < interval / 2
    callers = [
        threading.Thread(target=portal.ledger.record_grouped, args=(AuditEvent(action=f"test.busy{n}", actor="t"),))
        for n in range(5)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert sizes == [1, 5]
    assert sorted(json.loads(row)["action"] for row in _entries(portal)[-5:]) == [f"test.busy{n}" for n in range(5)]


def test_group_committed_entries_are_the_bytes_a_direct_append_writes(portal: Portal) -> None:
    """On PostgreSQL the group commit has the database chain and hash its entries (migration 0015):
    they must be, byte for byte, what ``encode_entry`` makes, and verify."""
    _fill(portal, 3)
    events = [
        AuditEvent(action="test.grouped", actor="t", subject=f"s{n}", details={"n": n, "ünï": "\u2028"}, payload=[n])
        for n in range(4)
    ]
    for event in events:
        portal.ledger.record_grouped(event)
    portal.ledger.record_grouped(AuditEvent(action="test.grouped", actor="t"))  # no subject, no details
    with portal.db.read() as session:
        rows = session.scalars(select(LedgerEntry).where(LedgerEntry.seq >= 2).order_by(LedgerEntry.seq)).all()
    prev = bytes(rows[0].leaf_hash)
    for row, event in zip(rows[1:], [*events, AuditEvent(action="test.grouped", actor="t")], strict=True):
        assert bytes(row.entry) == encode_entry(row.seq, row.created_at, prev, event)
        assert bytes(row.leaf_hash) == merkle.leaf_hash(bytes(row.entry))
        assert row.subject == event.subject
        prev = bytes(row.leaf_hash)
    assert portal.ledger.verify().ok


def _entries(portal: Portal) -> list[str]:
    with portal.db.read() as session:
        return list(session.scalars(text("SELECT entry FROM ledger_entries ORDER BY seq")))


@pytest.fixture
def small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans of 8 entries read 3 at a time, so a few dozen entries cross many span and batch edges."""
    monkeypatch.setattr(scan, "SPAN", 8)
    monkeypatch.setattr(scan, "BATCH", 3)


def _forbid_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_walk(*_args: object) -> None:
        raise AssertionError("a sound ledger is verified from its spans alone, without the entry-by-entry walk")

    monkeypatch.setattr(Ledger, "_walk", no_walk)


@pytest.mark.usefixtures("small_spans")
@pytest.mark.parametrize("workers", [1, 2])
def test_verify_in_spans_recomputes_every_checkpoint_root(
    portal: Portal, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_the_walk(monkeypatch)
    for count in (5, 3, 16, 9, 20):  # checkpoints at 5, 8 (a span edge), 24, 33 and 53
        _fill(portal, count)
        portal.ledger.checkpoint()
    _fill(portal, 4)
    report = portal.ledger.verify(workers=workers)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (57, 5)


@pytest.mark.usefixtures("small_spans")
def test_verify_leaves_the_chain_before_the_latest_checkpoint_to_its_signed_root(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_the_walk(monkeypatch)
    checked: list[int] = []
    check = scan.chained

    def recording(first_seq: int, entries: Sequence[bytes], previous: Sequence[bytes]) -> bool:
        checked.extend(range(first_seq, first_seq + len(entries)))
        return check(first_seq, entries, previous)

    monkeypatch.setattr(scan, "chained", recording)
    _fill(portal, 10)
    portal.ledger.checkpoint()
    _fill(portal, 12)
    portal.ledger.checkpoint()  # at 22, inside a batch (batches of 3 start at 21)
    _fill(portal, 5)
    report = portal.ledger.verify(workers=1)
    assert report.ok, report.problems
    assert checked == list(range(22, 27))
    assert "the hash chain of the entries no signed checkpoint covers (from entry 22 on)" in report.checks[0]


@pytest.mark.usefixtures("small_spans")
@pytest.mark.parametrize("workers", [1, 2])
def test_verify_in_spans_names_an_edit_in_a_late_span(portal: Portal, workers: int) -> None:
    _fill(portal, 40)
    portal.ledger.checkpoint()
    _rewrite_with_its_leaf(portal, 29, "actor", "staff:someone-else")
    report = portal.ledger.verify(workers=workers)
    assert report.problems[0].startswith("the chain breaks at entry 30: entry 29 was altered")
    assert any("history was rewritten" in p for p in report.problems)


def test_an_altered_ledger_head_is_named(portal: Portal) -> None:
    _fill(portal, 12)
    with portal.db.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_head SET last_leaf = :h"), {"h": bytes(32)})
    assert _problems(portal) == ["the ledger head's last leaf hash is not entry 11's (the head was altered)"]


_SAME_PREV = [bytes.fromhex("ab" * 32)]  # the leaf hash every entry shaped below carries as "prev"


def _sorted_like(seqs: Sequence[int]) -> list[bytes]:
    """Entries shaped as version 1 wrote them, every key sorted."""
    return [b'{"details":{},"prev":"%s","purpose":null,"seq":%d,"subject":null}' % (b"ab" * 32, i) for i in seqs]


def _leading_like(seqs: Sequence[int]) -> list[bytes]:
    """Entries shaped as version 2 writes them, "prev" and "seq" first."""
    return [b'{"prev":"%s","seq":%d,"details":{},"purpose":null,"subject":null}' % (b"ab" * 32, i) for i in seqs]


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.replace(b'"seq":3,', b'"seq":4,'),
        lambda e: e.replace(b"ab" * 32, b"cd" * 32),
        lambda e: e.replace(b"ab" * 32, b"cd" * 32).replace(b'"details":{}', b'"details":{"prev":"%s"}' % (b"ab" * 32)),
        lambda e: e.replace(b'"details":{}', b'"details":{"seq":3}').replace(b',"seq":3,', b',"seq":5,'),
        lambda e: e.replace(b',"seq":3,', b',"seq":3 ,'),
        lambda e: e.replace(b'"prev":', b'"prov":'),
    ],
    ids=["wrong seq", "wrong prev", "right prev only nested", "right seq only nested", "padded seq", "no prev"],
)
def test_the_byte_level_chain_check_refuses_a_damaged_entry(damage: Callable[[bytes], bytes]) -> None:
    ledger_like = _sorted_like(range(6))
    nested = ledger_like[3].replace(b'"details":{}', b'"details":{"prev":"x","seq":1}')
    with_nested = [*ledger_like[:3], nested, *ledger_like[4:]]
    assert scan.chained(0, with_nested, _SAME_PREV * 6), "nested keys are not the entry's"
    _assert_entry_3_damaged_is_refused(ledger_like, damage)


def _assert_entry_3_damaged_is_refused(entries: list[bytes], damage: Callable[[bytes], bytes]) -> None:
    previous = _SAME_PREV * len(entries)
    assert scan.chained(0, entries, previous)
    damaged = [*entries[:3], damage(entries[3]), *entries[4:]]
    assert damaged[3] != entries[3]
    assert not scan.chained(0, damaged, previous)


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.replace(b'"seq":3,', b'"seq":4,'),
        lambda e: e.replace(b'"seq":3,', b'"seq":30,'),
        lambda e: e.replace(b"ab" * 32, b"cd" * 32),
        lambda e: e.replace(b"ab" * 32, b"cd" * 32).replace(b'"details":{}', b'"details":{"prev":"%s"}' % (b"ab" * 32)),
        lambda e: e.replace(b'"seq":3,', b'"seq":5,').replace(b'"details":{}', b'"details":{"seq":3}'),
        lambda e: e.replace(b'"seq":3,', b'"seq":3 ,'),
        lambda e: e.replace(b'{"prev":', b'{"prov":'),
        lambda e: e[:80],
    ],
    ids=[
        "wrong seq",
        "longer seq",
        "wrong prev",
        "right prev only nested",
        "right seq only nested",
        "padded seq",
        "no prev",
        "cut short",
    ],
)
def test_the_chain_check_refuses_a_damaged_entry_that_leads_with_its_chain(damage: Callable[[bytes], bytes]) -> None:
    _assert_entry_3_damaged_is_refused(_leading_like(range(6)), damage)


def test_the_chain_check_reads_each_run_of_entries_in_its_own_layout() -> None:
    # While processes of two releases append side by side, the two layouts interleave.
    sorted_like = _sorted_like(range(9))
    leading = _leading_like(range(9))
    mixed = [*sorted_like[:2], *leading[2:5], sorted_like[5], *leading[6:]]
    previous = _SAME_PREV * 9
    assert scan.chained(0, mixed, previous)
    assert scan.chained(0, [*leading[:4], *sorted_like[4:]], previous), "a batch that begins in the new layout"
    assert not scan.chained(1, mixed, previous), "every run is checked against its own sequence numbers"
    assert not scan.chained(0, [*mixed[:5], leading[6], *mixed[6:]], previous)


def test_entries_lead_with_their_chain_fields_and_parse_as_before(portal: Portal) -> None:
    _fill(portal, 2)
    with portal.db.engine.connect() as conn:
        raw = bytes(conn.execute(text("SELECT entry FROM ledger_entries WHERE seq = 1")).scalar_one())
    document = json.loads(raw)
    assert raw.startswith(b'{"prev":"%s","seq":1,"action":"records.read",' % document["prev"].encode())
    assert document["v"] == 2 and entry_bytes(document) == raw
    rest = {key: value for key, value in document.items() if key not in ("prev", "seq")}
    assert raw.endswith(canonical_json(rest)[1:])


@pytest.mark.usefixtures("small_spans")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_ledger_begun_by_an_earlier_release_verifies_across_the_layout_change(
    portal: Portal, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as release_1:
        release_1.setattr("portal.audit.ledger.entry_bytes", canonical_json)
        _fill(portal, 10)  # entry 10 falls inside a batch of 3 and a span of 8
    portal.ledger.checkpoint()
    _fill(portal, 12)
    portal.ledger.checkpoint()
    _forbid_the_walk(monkeypatch)
    report = portal.ledger.verify(workers=workers)
    assert report.ok, report.problems
    assert report.entries == 22


@pytest.mark.usefixtures("small_spans")
def test_an_edit_of_an_earlier_release_entry_is_still_named(portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as release_1:
        release_1.setattr("portal.audit.ledger.entry_bytes", canonical_json)
        _fill(portal, 10)
    _fill(portal, 6)
    doc = _entry(portal, 4)
    doc["actor"] = "staff:someone-else"
    edited = canonical_json(doc)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE ledger_entries SET entry = :e, leaf_hash = :h WHERE seq = 4"),
            {"e": edited, "h": merkle.leaf_hash(edited)},
        )
    assert _problems(portal)[0].startswith("the chain breaks at entry 5: entry 4 was altered")


def test_a_span_reader_opens_a_relative_sqlite_path_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with closing(sqlite3.connect("ledger.sqlite3")) as conn, conn:
        conn.execute("CREATE TABLE ledger_entries (seq BIGINT PRIMARY KEY, entry BLOB, leaf_hash BLOB)")
        conn.executemany("INSERT INTO ledger_entries VALUES (?, ?, ?)", [(i, b"e%d" % i, b"h%d" % i) for i in range(4)])
    source = scan.RowSource(sqlite_path="ledger.sqlite3")
    with closing(source.connect()) as conn:
        assert source.span_rows(conn, 1, 3) == ([b"e1", b"e2"], [b"h1", b"h2"])
        assert source.stored_leaf(conn, 3) == b"h3"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO ledger_entries VALUES (9, x'', x'')")


@pytest.mark.usefixtures("small_spans")
@pytest.mark.parametrize("seq", [15, 16])  # the last entry of a span, which the next span chains to; its first
def test_verify_in_spans_names_an_entry_deleted_at_a_span_edge(portal: Portal, seq: int) -> None:
    _fill(portal, 30)
    with _triggers_off(portal), portal.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_entries WHERE seq = :s"), {"s": seq})
    report = portal.ledger.verify(workers=2)
    assert report.problems[0] == f"entry {seq} is missing (deleted): found sequence {seq + 1} next"


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
@pytest.mark.parametrize("grouped", [False, True], ids=["in a transaction", "grouped"])
def test_the_first_two_entries_ever_appended_at_once_are_0_and_1(portal: Portal, grouped: bool) -> None:
    """An empty ledger has no head row to lock: the first append makes it, and a second one at the same
    moment waits for it, whether in a transaction of its own or through the group committer's function."""
    assert portal.ledger.size() == 0
    second_append = portal.ledger.record_grouped if grouped else portal.ledger.record
    first, second = overlapping(
        portal,
        lambda: portal.ledger.record(AuditEvent(action="test.first", actor="system:test")),
        lambda: second_append(AuditEvent(action="test.second", actor="system:test")),
    )
    assert (first.result(), second.result()) == (0, 1)
    assert portal.ledger.verify().ok
