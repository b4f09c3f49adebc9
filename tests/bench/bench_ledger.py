"""Benchmark of the audit ledger (a script, not a pytest test).

    .venv/bin/python -m tests.bench.bench_ledger [--pg] [--entries N]

Prints one ``ledger.<backend>.<figure>=<value>`` line per figure, with ``#`` lines for context:

1. append throughput: ``append_many`` in batches of 1,000 (one transaction each) and single
   ``record`` calls (one transaction each);
2. verification of an ``--entries``-entry ledger (filled with ``append_many`` in batches of
   10,000, then checkpointed), against two baselines measured in the same run: a bare
   ``sha256(b"\\x00" + entry)`` loop over the entries in memory, and reading the same rows in the
   ledger's 50,000-row batches plus that loop. Verify runs with one worker process per core (its
   wall and CPU time are both printed), then once more in this process alone;
3. inclusion proofs for 1,000 random entries: loading the tree, per-proof generation and
   verification against the signed checkpoint's root;
4. peak memory of each phase and of the run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import resource
import sys
import time
import uuid
from collections.abc import Iterator, Sequence

from sqlalchemy import Row, select

from portal.audit import merkle
from portal.audit.ledger import READ_BATCH, AuditEvent, LedgerEntry, VerifyReport
from portal.audit.scan import default_workers
from portal.container import Portal
from tests.bench._common import (
    BenchPortal,
    Reporter,
    bench_portal,
    best_of,
    lifetime_peak_rss_mib,
    machine,
    median,
    percentile,
    phase_memory,
    server_version,
    timed,
)

APPEND_BATCH = 1_000
FILL_BATCH = 10_000
VERIFY_GOAL = 2.0  # verify within 2x a bare sha256 loop over the same entries


def make_events(rng: random.Random, count: int) -> list[AuditEvent]:
    """Events shaped like the record store's ``records.read`` entries."""
    return [
        AuditEvent(
            action="records.read",
            actor="staff:x",
            subject=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            purpose="TREAT",
            details={"categories": "all", "types": "all"},
        )
        for _ in range(count)
    ]


# ----------------------------------------------------------------------------- 1. appends


def bench_appends(portal: Portal, out: Reporter, rng: random.Random, batches: int, records: int) -> None:
    ledger = portal.ledger
    batch_seconds: list[float] = []
    for _ in range(batches):
        events = make_events(rng, APPEND_BATCH)
        start = time.perf_counter()
        with portal.db.write() as session:
            ledger.append_many(session, events)
        batch_seconds.append(time.perf_counter() - start)
    total = sum(batch_seconds)
    out.figure("append_many_batch_size", APPEND_BATCH)
    out.figure("append_many_entries", batches * APPEND_BATCH)
    out.figure("append_many_entries_per_s", batches * APPEND_BATCH / total)
    out.figure("append_many_batch_median_ms", median(batch_seconds) * 1e3)
    out.figure("append_many_batch_p99_ms", percentile(batch_seconds, 0.99) * 1e3)

    events = make_events(rng, records)
    call_seconds: list[float] = []
    deadline = time.monotonic() + 30.0  # bounded even on a slow disk
    for event in events:
        start = time.perf_counter()
        ledger.record(event)
        call_seconds.append(time.perf_counter() - start)
        if time.monotonic() > deadline:
            break
    out.figure("record_calls", len(call_seconds))
    out.figure("record_entries_per_s", len(call_seconds) / sum(call_seconds))
    out.figure("record_median_ms", median(call_seconds) * 1e3)
    out.figure("record_p99_ms", percentile(call_seconds, 0.99) * 1e3)


# ----------------------------------------------------------------------------- 2. verify


def fill(portal: Portal, out: Reporter, rng: random.Random, target: int) -> None:
    """Append until the ledger holds ``target`` entries, in batches of 10,000."""
    ledger = portal.ledger
    size = ledger.size()
    to_add = max(0, target - size)
    write_seconds = 0.0
    wall = time.perf_counter()
    next_report = 250_000
    while size < target:
        events = make_events(rng, min(FILL_BATCH, target - size))
        start = time.perf_counter()
        with portal.db.write() as session:
            ledger.append_many(session, events)
        write_seconds += time.perf_counter() - start
        size += len(events)
        if size >= next_report:
            print(f"  filled {size:_} entries in {time.perf_counter() - wall:.0f} s", file=sys.stderr, flush=True)
            next_report += 250_000
    out.figure("fill_entries_added", to_add)
    out.figure("fill_seconds", write_seconds)
    out.figure("fill_wall_seconds_incl_event_generation", time.perf_counter() - wall)
    if to_add:
        out.figure("fill_entries_per_s", to_add / write_seconds)


def read_batches(portal: Portal) -> Iterator[Sequence[Row[int, bytes, bytes]]]:
    """The ledger's rows as verify reads them: one connection and one 50,000-row query per batch."""
    last = -1
    while True:
        query = (
            select(LedgerEntry.seq, LedgerEntry.entry, LedgerEntry.leaf_hash)
            .where(LedgerEntry.seq > last)
            .order_by(LedgerEntry.seq)
            .limit(READ_BATCH)
        )
        with portal.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def timed_verify(portal: Portal, workers: int) -> tuple[float, float, VerifyReport]:
    """Wall seconds, CPU seconds (this process and its worker processes) and the report."""
    before = cpu_seconds()
    elapsed, report = timed(lambda: portal.ledger.verify(workers=workers))
    return elapsed, cpu_seconds() - before, report


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_verify(portal: Portal, out: Reporter) -> None:
    ledger = portal.ledger
    workers = default_workers()
    # Before any checkpoint, no signed root vouches for the entries: the chain is checked for all.
    unvouched_seconds, _cpu, unvouched = timed_verify(portal, workers)
    out.figure("verify_without_checkpoint_ok", unvouched.ok)
    out.figure("verify_without_checkpoint_seconds", unvouched_seconds)
    elapsed, checkpoint = timed(ledger.checkpoint)
    out.figure("checkpoint_seconds", elapsed)
    out.figure("checkpoint_tree_size", checkpoint.tree_size)

    gc.collect()
    with phase_memory() as memory:
        verify_seconds, verify_cpu, report = timed_verify(portal, workers)
    out.figure("verify_ok", report.ok)
    out.figure("verify_entries", report.entries)
    out.figure("verify_checkpoints", report.checkpoints)
    if not report.ok:
        out.note("verify problems: " + "; ".join(report.problems[:3]))
    out.figure("verify_workers", workers)
    out.figure("verify_seconds", verify_seconds)
    out.figure("verify_cpu_seconds_all_processes", verify_cpu)
    out.figure("verify_us_per_entry", verify_seconds / max(1, report.entries) * 1e6)
    out.figure("verify_peak_rss_over_start_mib", memory["peak_over_start_mib"])
    out.figure("verify_worker_peak_rss_mib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    # The process peak so far: filling, checkpointing and verifying (before any in-memory baseline).
    out.figure("peak_rss_through_verify_mib", lifetime_peak_rss_mib())
    one_seconds, _cpu, one_report = timed_verify(portal, 1)
    out.figure("verify_one_process_seconds", one_seconds)
    out.figure("verify_one_process_ok", one_report.ok)

    # Baseline (b): the same rows in the same batches, plus the bare leaf-hash loop (best of 2;
    # verify is timed once, so the ratio leans against verify rather than for it).
    sha256 = hashlib.sha256

    def read_only() -> None:
        for _rows in read_batches(portal):
            pass

    def read_and_hash() -> None:
        for rows in read_batches(portal):
            for _seq, entry, _leaf in rows:
                sha256(b"\x00" + entry).digest()

    next(read_batches(portal), None)  # warm-up: first query compile and connection
    gc.collect()
    db_read_seconds = best_of(1, read_only)
    db_read_hash_seconds = best_of(2, read_and_hash)

    sha_seconds, parts = in_memory_baselines(portal, out)
    out.figure("baseline_db_read_seconds", db_read_seconds)
    out.figure("baseline_db_read_plus_sha256_seconds", db_read_hash_seconds)
    ratio = verify_seconds / sha_seconds
    out.figure("ratio_vs_sha256_loop", ratio)
    out.figure("cpu_ratio_vs_sha256_loop", verify_cpu / sha_seconds)
    out.figure("one_process_ratio_vs_sha256_loop", one_seconds / sha_seconds)
    out.figure("ratio_vs_db_read_plus_sha256", verify_seconds / db_read_hash_seconds)
    out.figure("without_checkpoint_ratio_vs_sha256_loop", unvouched_seconds / sha_seconds)
    out.figure("verify_within_goal_2x_sha256_loop", ratio <= VERIFY_GOAL)
    for name, seconds in parts.items():
        out.figure(f"component_{name}_seconds", seconds)
    gc.collect()


def in_memory_baselines(portal: Portal, out: Reporter) -> tuple[float, dict[str, float]]:
    """Baseline (a), the bare loop over the entry bytes in memory, and verify's steps on their own."""
    sha256 = hashlib.sha256
    entries = [entry for rows in read_batches(portal) for _seq, entry, _leaf in rows]

    def sha_loop() -> None:
        for entry in entries:
            sha256(b"\x00" + entry).digest()

    sha_seconds = best_of(3, sha_loop)
    out.figure("entry_bytes_mean", sum(map(len, entries)) / max(1, len(entries)))
    out.figure("baseline_sha256_loop_seconds", sha_seconds)
    return sha_seconds, components(entries)


def components(entries: list[bytes]) -> dict[str, float]:
    """What verify's per-entry steps cost on their own, over the same entries in memory."""
    leaves = merkle.leaf_hashes(entries)
    loads = json.loads

    def json_loop() -> None:
        for entry in entries:
            loads(entry)

    def append_loop() -> None:
        tree = merkle.CompactRange()
        append = tree.append
        for leaf in leaves:
            append(leaf)

    def extend() -> None:
        merkle.CompactRange().extend(leaves)

    def hex_loop() -> None:
        for leaf in leaves:
            leaf.hex()

    return {
        "json_loads": best_of(1, json_loop),
        "leaf_hashes_batch": best_of(1, lambda: merkle.leaf_hashes(entries)),
        "compact_range_append_each": best_of(1, append_loop),
        "compact_range_extend": best_of(1, extend),
        "prev_hex": best_of(1, hex_loop),
    }


# ----------------------------------------------------------------------------- 3. proofs


def bench_proofs(portal: Portal, out: Reporter, rng: random.Random, count: int) -> bool:
    ledger = portal.ledger
    checkpoint = ledger.checkpoints()[-1]
    tree_size = checkpoint.tree_size
    seqs = rng.sample(range(tree_size), min(count, tree_size))

    gc.collect()
    with phase_memory() as memory:
        public_seconds, proofs = timed(lambda: ledger.inclusion_proofs(seqs, tree_size))
    out.figure("inclusion_proofs_call_seconds", public_seconds)
    out.figure("inclusion_proofs_call_count", len(seqs))
    out.figure("inclusion_proofs_call_peak_rss_over_start_mib", memory["peak_over_start_mib"])

    # The same call taken apart: load the leaf hashes, build the tree, then one proof at a time.
    read_seconds, leaves = timed(lambda: ledger.leaf_hashes(tree_size))
    build_seconds, tree = timed(lambda: merkle.MerkleTree(leaves))
    out.figure("tree_load_leaf_hashes_seconds", read_seconds)
    out.figure("tree_build_seconds", build_seconds)
    out.figure("tree_load_total_seconds", read_seconds + build_seconds)

    gen_us: list[float] = []
    ver_us: list[float] = []
    all_ok = True
    for seq in seqs:
        start = time.perf_counter()
        proof = tree.inclusion_proof(seq, tree_size)
        middle = time.perf_counter()
        ok = merkle.verify_inclusion(leaves[seq], seq, tree_size, proof, checkpoint.root_hash)
        end = time.perf_counter()
        all_ok = all_ok and ok and proof == proofs[seq]
        gen_us.append((middle - start) * 1e6)
        ver_us.append((end - middle) * 1e6)
    out.figure("inclusion_proof_median_us", median(gen_us))
    out.figure("inclusion_proof_p99_us", percentile(gen_us, 0.99))
    out.figure("inclusion_verify_median_us", median(ver_us))
    out.figure("inclusion_verify_p99_us", percentile(ver_us, 0.99))
    out.figure("inclusion_proofs_all_verified_against_checkpoint", all_ok)
    return all_ok


# ----------------------------------------------------------------------------- main


def run(bench: BenchPortal, args: argparse.Namespace) -> int:
    portal = bench.portal
    out = Reporter(f"ledger.{bench.backend}")
    rng = random.Random(args.seed)
    out.header(
        "audit ledger benchmark",
        backend=server_version(portal),
        machine=machine(),
        entries=f"{args.entries:_}",
    )
    started = time.perf_counter()

    bench_appends(portal, out, rng, args.append_batches, args.records)
    fill(portal, out, rng, args.entries)
    bench_verify(portal, out)
    proofs_ok = bench_proofs(portal, out, rng, args.proofs)

    # Includes baseline (a), which holds every entry in memory at once; verify itself streams.
    out.figure("peak_rss_mib", lifetime_peak_rss_mib())
    out.figure("total_seconds", time.perf_counter() - started)
    return 0 if proofs_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_ledger", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--pg", action="store_true", help="run on a throwaway PostgreSQL (or $PORTAL_TEST_PG_URL)")
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger size for verify and proofs")
    parser.add_argument("--append-batches", type=int, default=20, help="batches of 1,000 for append_many")
    parser.add_argument("--records", type=int, default=2_000, help="single record() calls (at most 30 s)")
    parser.add_argument("--proofs", type=int, default=1_000, help="random inclusion proofs")
    parser.add_argument("--seed", type=int, default=20261101)
    args = parser.parse_args(argv)
    if args.entries < 1 or args.append_batches < 1 or args.records < 1 or args.proofs < 1:
        parser.error("sizes must be at least 1")
    with bench_portal(pg=args.pg) as bench:
        return run(bench, args)


if __name__ == "__main__":
    raise SystemExit(main())
