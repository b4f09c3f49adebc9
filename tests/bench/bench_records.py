"""Benchmark of the encrypted record store (a script, not a pytest test).

    .venv/bin/python -m tests.bench.bench_records [--pg] [--seed S] [--runs N] [--profile auto|always|never]

Prints one ``records.<backend>.<figure>=<value>`` line per figure, with ``#`` lines for context:

1. import of one large synthetic patient (5,000-6,000 FHIR resources) through ``import_bundle``;
2. warm ``read`` of all of it (median of ``--runs``), against a baseline measured in the same run:
   the same rows selected and the same plaintext bodies (decrypted once beforehand, kept in
   memory) parsed with ``json.loads``, i.e. the read without decryption; read and baseline runs
   alternate. The per-row costs of the
   decryption path are timed one by one, and the read is profiled when over 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Row, select

from portal.audit.ledger import AuditEvent
from portal.container import Portal
from portal.records.models import Resource
from portal.records.synthetic import generate_patient_bundle
from portal.security.crypto import FieldContext, decrypt_field
from tests.bench._common import (
    BenchPortal,
    Reporter,
    bench_portal,
    lifetime_peak_rss_mib,
    machine,
    median,
    phase_memory,
    profile,
    server_version,
    timed,
)

ACTOR = "system:bench"
TODAY = date(2026, 11, 1)
READ_GOAL = 1.5  # a warm read within 1.5x the same read without encryption

RowT = Row[str, str, str, int, bytes]


def select_rows(portal: Portal, patient_id: str) -> Sequence[RowT]:
    """The rows ``RecordStore.read`` selects for a whole record, in its order."""
    query = (
        select(Resource.id, Resource.resource_type, Resource.category, Resource.key_version, Resource.body)
        .where(Resource.patient_id == patient_id)
        .order_by(Resource.resource_type, Resource.id)
    )
    with portal.db.read() as session:
        return session.execute(query).all()


def context(patient_id: str, row_id: str, version: int) -> FieldContext:
    return FieldContext(patient_id=patient_id, table="resources", column="body", row_id=row_id, key_version=version)


def runs_of(runs: int, fn: Callable[[], object]) -> list[float]:
    """Seconds of each of ``runs`` calls; each result is dropped before the next run starts."""
    seconds: list[float] = []
    for _ in range(runs):
        gc.collect()
        elapsed, result = timed(fn)
        seconds.append(elapsed)
        del result
    return seconds


# ----------------------------------------------------------------------------- 1. import


def bench_import(portal: Portal, out: Reporter, bundle: dict[str, Any], profile_mode: str) -> str:
    count = len(bundle["entry"])
    gc.collect()
    with phase_memory() as memory:
        elapsed, result = timed(lambda: portal.records.import_bundle(bundle, actor=ACTOR))
    out.figure("import_resources", count)
    out.figure("import_seconds", elapsed)
    out.figure("import_resources_per_s", count / elapsed)
    out.figure("import_peak_rss_over_start_mib", memory["peak_over_start_mib"])
    if profile_mode == "always":
        # A second import of the same bundle updates every row in place: same validation and encryption.
        _again, table = profile(lambda: portal.records.import_bundle(bundle, actor=ACTOR), top=12)
        out.note("cProfile of a re-import of the same bundle (rows updated), top functions by own time:")
        out.note(table)
    return result.patient_id


# ----------------------------------------------------------------------------- 2. read


def plaintext_bodies(portal: Portal, patient_id: str, rows: Sequence[RowT]) -> list[bytes]:
    """Each row's decrypted body, decrypted once (the baseline parses these without decrypting)."""
    keys: dict[tuple[str, int], bytes] = {}
    bodies: list[bytes] = []
    for row_id, _type, category, version, body in rows:
        if (category, version) not in keys:
            keys[(category, version)] = portal.keys.key_version(patient_id, category, version)
        bodies.append(decrypt_field(keys[(category, version)], body, context(patient_id, row_id, version)))
    return bodies


def bench_read(portal: Portal, out: Reporter, patient_id: str, runs: int, profile_mode: str) -> bool:
    records = portal.records

    def read() -> list[Any]:
        return records.read(patient_id, actor=ACTOR, purpose="TEST")

    gc.collect()
    with phase_memory() as memory:  # one read's own peak: the rows, plaintexts and parsed resources
        first_seconds, first = timed(read)
    count = len(first)
    rows = select_rows(portal, patient_id)
    plain = plaintext_bodies(portal, patient_id, rows)
    same = [r.id for r in first] == [row[0] for row in rows] and all(
        r.resource == json.loads(body) for r, body in zip(first, plain, strict=True)
    )
    del first
    out.figure("read_resources", count)
    out.figure("read_plaintext_mib", sum(map(len, plain)) / 2**20)
    out.figure("read_ciphertext_mib", sum(len(row[4]) for row in rows) / 2**20)
    out.figure("read_first_seconds", first_seconds)

    loads = json.loads

    def baseline() -> list[tuple[str, str, str, Any]]:
        selected = select_rows(portal, patient_id)
        return [(row[0], row[1], row[2], loads(body)) for row, body in zip(selected, plain, strict=True)]

    # Reads and baseline runs alternate, so a change in machine load hits both alike.
    read_seconds: list[float] = []
    base_seconds: list[float] = []
    for _ in range(runs):
        read_seconds += runs_of(1, read)
        base_seconds += runs_of(1, baseline)
    select_seconds = runs_of(runs, lambda: select_rows(portal, patient_id))

    def audit_entry() -> int:
        return portal.ledger.record(
            AuditEvent(action="records.read", actor=ACTOR, subject=patient_id, purpose="TEST", details={})
        )

    ledger_seconds = runs_of(runs, audit_entry)

    read_median, base_median = median(read_seconds), median(base_seconds)
    out.figure("read_runs", runs)
    out.figure("read_seconds", read_median)
    out.figure("read_min_seconds", min(read_seconds))
    out.figure("read_max_seconds", max(read_seconds))
    out.figure("read_resources_per_s", count / read_median)
    out.figure("read_peak_rss_over_start_mib", memory["peak_over_start_mib"])
    out.figure("baseline_seconds", base_median)
    out.figure("baseline_select_only_seconds", median(select_seconds))
    out.figure("read_audit_entry_seconds", median(ledger_seconds))
    ratio = read_median / base_median
    out.figure("ratio", ratio)
    # Fastest read over fastest baseline: steadier than the medians when the machine is busy.
    out.figure("ratio_best_of_runs", min(read_seconds) / min(base_seconds))
    out.figure("read_within_goal_1_5x", ratio <= READ_GOAL)
    out.figure("read_matches_plaintext", same)

    for name, seconds in decrypt_components(portal, patient_id, rows, plain).items():
        out.figure(f"component_{name}_seconds", seconds)

    if profile_mode == "always" or (profile_mode == "auto" and ratio > READ_GOAL):
        _result, table = profile(read, top=14)
        out.note("cProfile of RecordStore.read (one warm read), top functions by own time:")
        out.note(table)
    return same


def decrypt_components(portal: Portal, patient_id: str, rows: Sequence[RowT], plain: list[bytes]) -> dict[str, float]:
    """Each step of the per-row decryption path, over all rows (seconds for the whole record)."""
    keys = {(row[2], row[3]): portal.keys.key_version(patient_id, row[2], row[3]) for row in rows}
    contexts = [context(patient_id, row[0], row[3]) for row in rows]
    aads = [b"\x01" + ctx.aad() for ctx in contexts]
    ciphers = {pair: AESGCM(dek) for pair, dek in keys.items()}
    loads = json.loads

    def steps() -> dict[str, Callable[[], object]]:
        return {
            # what RecordStore._open does per row, in order
            "field_context": lambda: [context(patient_id, row[0], row[3]) for row in rows],
            "aad": lambda: [ctx.aad() for ctx in contexts],
            "aesgcm_construct": lambda: [AESGCM(keys[(row[2], row[3])]) for row in rows],
            "aesgcm_decrypt": lambda: [
                ciphers[(row[2], row[3])].decrypt(row[4][1:13], row[4][13:], aad)
                for row, aad in zip(rows, aads, strict=True)
            ],
            "json_loads": lambda: [loads(body) for body in plain],
            # the whole decrypt_field call, and the same with one AESGCM per data key
            "decrypt_field_total": lambda: [
                decrypt_field(keys[(row[2], row[3])], row[4], ctx) for row, ctx in zip(rows, contexts, strict=True)
            ],
            "decrypt_cached_cipher_total": lambda: [
                ciphers[(row[2], row[3])].decrypt(row[4][1:13], row[4][13:], b"\x01" + ctx.aad())
                for row, ctx in zip(rows, contexts, strict=True)
            ],
        }

    return {name: median(runs_of(3, fn)) for name, fn in steps().items()}


# ----------------------------------------------------------------------------- main


def run(bench: BenchPortal, args: argparse.Namespace) -> int:
    portal = bench.portal
    out = Reporter(f"records.{bench.backend}")
    size: str | int = int(args.size) if args.size.isdigit() else args.size
    out.header(
        "encrypted record store benchmark",
        backend=server_version(portal),
        machine=machine(),
        bundle=f"generate_patient_bundle({args.seed}, size={size!r}, today={TODAY.isoformat()})",
    )
    started = time.perf_counter()
    generate_seconds, bundle = timed(lambda: generate_patient_bundle(args.seed, size=size, today=TODAY))
    out.figure("generate_seconds", generate_seconds)
    out.figure("bundle_json_mib", len(json.dumps(bundle, separators=(",", ":"))) / 2**20)

    patient_id = bench_import(portal, out, bundle, args.profile)
    del bundle
    ok = bench_read(portal, out, patient_id, args.runs, args.profile)

    out.figure("peak_rss_mib", lifetime_peak_rss_mib())
    out.figure("total_seconds", time.perf_counter() - started)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_records", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--pg", action="store_true", help="run on a throwaway PostgreSQL (or $PORTAL_TEST_PG_URL)")
    parser.add_argument("--seed", type=int, default=20261101, help="seed of the synthetic patient")
    parser.add_argument("--size", default="large", help="small, typical, large or a resource count")
    parser.add_argument("--runs", type=int, default=5, help="timed warm reads (the median is reported)")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the read: auto = only when over 1.5x the baseline; always also profiles an import",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with bench_portal(pg=args.pg) as bench:
        return run(bench, args)


if __name__ == "__main__":
    raise SystemExit(main())
