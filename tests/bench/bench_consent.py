"""Benchmark of the consent decision API (a script, not a pytest test).

    .venv/bin/python -m tests.bench.bench_consent [--patients 100000] [--requests N] [--concurrency C] [--sqlite]

Goal (from the issue): on 2 cores, with 100,000 patients and 10 purposes, GET
/api/v1/consent/decision answers >= 2,000 decisions/s with p99 <= 20 ms on PostgreSQL.

What it does, in one run:

1. starts a throwaway PostgreSQL cluster (or uses SQLite files with ``--sqlite``), migrates,
   creates the 6 default purposes and 4 more (create, draft, publish: 10 in all);
2. bulk-inserts the patients, their MRN blind indexes and the current consent decisions of
   40 % of them (3 purposes each) with SQLAlchemy Core executemany. The decisions are the
   ``consent_decisions`` rows only: no history rows, receipts or ledger entries (the change path
   is not what this measures; the decision path reads only ``consent_decisions``);
3. serves the real app (``create_app``) with uvicorn in a separate process on 127.0.0.1, with
   the same ``PORTAL_*`` settings, and issues access tokens (scope consent:read) to API clients;
4. drives it with ``--concurrency`` httpx clients (asyncio, HTTP/1.1 keep-alive): first GET
   /healthz (no database: the framework's ceiling on this machine), then the decision API, each
   after a warm-up that is measured separately and excluded. Every decision response must be a
   200 with the decision the seeded data implies, or it counts as an error. Then the same with
   wrk (C, a few µs a request), at ``--concurrency`` and at each connection count of ``--sweep``,
   since in a closed loop latency grows with connections once the server is saturated. A last
   short phase sends all calls with one client's token, as a single real integration would;
5. profiles ``ConsentService.decide`` called directly (``--profile-calls``, cProfile) and times
   its parts and the bearer-token check one by one.

Prints ``<prefix>.<figure>=<value>`` lines (prefixes ``consent``, ``healthz``,
``consent_one_client``, ``profile``) and ``#`` lines for context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from sqlalchemy import insert, text

from portal import migrate
from portal.api.service import ApiRateLimits
from portal.audit.ledger import AuditEvent
from portal.consent.models import ConsentDecision
from portal.container import Portal, build_portal
from portal.records.models import Patient, PatientIdentifier
from portal.security.ratelimit import Limit
from portal.settings import Settings
from tests.bench import _wrk
from tests.bench._common import (
    Reporter,
    count_statements,
    free_port,
    goal,
    machine,
    ms,
    percentile,
    pstats_table,
    server_version,
)
from tests.bench._server import LiveServer, live_server
from tests.support.servers import LocalPostgres, PostgresServer, start_postgres

T = TypeVar("T")

ACTOR = "system:bench"
GOAL_DECISIONS_PER_S = 2_000.0
GOAL_P99_MS = 20.0

DECIDED_SHARE = 0.40  # patients with stored decisions
DECISIONS_PER_PATIENT = 3
GRANTED_SHARE = 0.65  # of stored decisions; the rest are withdrawn
STORED_REQUEST_SHARE = 0.5  # of requests, aimed at a (patient, purpose) with a stored decision
RECIPIENT_SHARE = 0.25  # of requests, naming one of the purpose's recipients
SEED_BATCH = 10_000

LIMITS = ApiRateLimits()
# Requests sent per API client: below its per-window limit, so the limiter never answers 429.
PER_CLIENT_BUDGET = LIMITS.api_per_client - 200
ONE_CLIENT_WARMUP = 50
HEALTHZ_TIME_LIMIT_S = 15.0
WARMUP_TIME_LIMIT_S = 15.0
ONE_CLIENT_TIME_LIMIT_S = 20.0
LOG_SETTLE_S = 0.3
IDLE_SAMPLE_S = 2.0
LOADGEN_SATURATED_CORES = 0.85  # one asyncio loop cannot use more than one core

# The 4 purposes added to the 6 defaults (the categories must be known data category codes).
EXTRA_PURPOSES: tuple[dict[str, Any], ...] = (
    {
        "code": "quality-audit",
        "title": "Clinical quality audits",
        "summary": "Auditors check samples of records to improve the quality of care.",
        "lawful_basis": "Consent (GDPR Art. 6(1)(a) and 9(2)(a))",
        "categories": ["clinical", "medications"],
        "recipients": ["National Clinical Audit Office"],
        "jurisdiction": "EU",
        "mode": "opt-out",
        "purpose_of_use": "HOPERAT",
    },
    {
        "code": "cancer-registry",
        "title": "Reporting to the cancer registry",
        "summary": "Diagnoses of cancer are reported to the regional cancer registry.",
        "lawful_basis": "Consent (GDPR Art. 6(1)(a) and 9(2)(a))",
        "categories": ["demographics", "clinical"],
        "recipients": ["Regional Cancer Registry", "National Cancer Statistics Unit"],
        "jurisdiction": "EU",
        "mode": "opt-out",
        "purpose_of_use": "PUBHLTH",
    },
    {
        "code": "teaching",
        "title": "Teaching of medical students",
        "summary": "De-identified cases may be used to teach medical students.",
        "lawful_basis": "Consent (GDPR Art. 6(1)(a) and 9(2)(a))",
        "categories": ["clinical"],
        "recipients": ["University Medical School"],
        "jurisdiction": "EU/US",
        "mode": "opt-in",
        "purpose_of_use": "HTEST",
    },
    {
        "code": "wellness-offers",
        "title": "Offers from wellness partners",
        "summary": "Partners may send you offers for wellness programmes.",
        "lawful_basis": "Consent (GDPR Art. 6(1)(a)); ePrivacy rules for electronic messages",
        "categories": ["demographics"],
        "recipients": ["Example Wellness Partners"],
        "jurisdiction": "EU/US",
        "mode": "opt-in",
        "purpose_of_use": "HMARKT",
    },
)


# ----------------------------------------------------------------------------- small helpers


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as uvicorn does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ----------------------------------------------------------------------------- CPU accounting

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()  # fields from "state" on: the name may hold spaces


def tree_cpu_seconds(root: int | None) -> float:
    """User + system CPU of a process and its descendants (and their reaped children), Linux only."""
    if root is None:
        return math.nan
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        todo.extend(children.get(pid, []))
    return total / _TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return math.nan, math.nan
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _TICKS, sum(values) / _TICKS


def _cores(busy: float, total: float) -> float:
    """Cores kept busy, from busy and total CPU seconds of the whole machine over one interval."""
    count = os.cpu_count() or 1
    return count * busy / total if total else math.nan


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuSnapshot:
    server: float
    postgres: float
    generator: float
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, server_pid: int | None, postgres_pid: int | None) -> CpuSnapshot:
        busy, total = machine_cpu_seconds()
        return cls(tree_cpu_seconds(server_pid), tree_cpu_seconds(postgres_pid), self_cpu_seconds(), busy, total)

    def since(self, before: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            self.server - before.server,
            self.postgres - before.postgres,
            self.generator - before.generator,
            self.machine_busy - before.machine_busy,
            self.machine_total - before.machine_total,
        )


# ----------------------------------------------------------------------------- 1. portal and purposes


@dataclass(frozen=True)
class PurposeInfo:
    code: str
    mode: str  # opt-in | opt-out
    recipients: tuple[str, ...]
    notice_id: str


def setup_purposes(portal: Portal) -> list[PurposeInfo]:
    """The 6 defaults and the 4 extra purposes, each with a published notice."""
    consent = portal.consent
    consent.ensure_defaults()
    for spec in EXTRA_PURPOSES:
        consent.create_purpose(**spec, actor=ACTOR)
        notice = f"## {spec['title']}\n\n{spec['summary']}\n\nYou can change your choice at any time."
        draft = consent.draft_notice(spec["code"], notice, material=False, actor=ACTOR)
        consent.publish_notice(draft.id, actor=ACTOR)
    found = []
    with portal.db.read() as session:
        for purpose in consent.purposes():
            current = consent.current_notice(session, purpose.code)
            found.append(PurposeInfo(purpose.code, purpose.mode, tuple(purpose.recipient_list), current.id))
    return found


# ----------------------------------------------------------------------------- 2. seeding


@dataclass
class Seeded:
    mrns: list[str]
    stored: dict[tuple[int, str], str]  # (patient number, purpose) -> granted | withdrawn
    figures: dict[str, float] = field(default_factory=dict)


def seed(portal: Portal, patients: int, purposes: Sequence[PurposeInfo], rng: random.Random) -> Seeded:
    """Patients, MRN blind indexes and current decisions, bulk-inserted in batches of SEED_BATCH."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(patients)]
    mrns = [f"MRN-B{i:06d}" for i in range(patients)]
    hmac_start = time.perf_counter()
    indexes = [portal.records.mrn_index(mrn) for mrn in mrns]
    hmac_seconds = time.perf_counter() - hmac_start

    notice_of = {p.code: p.notice_id for p in purposes}
    codes = sorted(notice_of)
    stored: dict[tuple[int, str], str] = {}
    for number in rng.sample(range(patients), round(patients * DECIDED_SHARE)):
        for code in rng.sample(codes, min(DECISIONS_PER_PATIENT, len(codes))):
            stored[number, code] = "granted" if rng.random() < GRANTED_SHARE else "withdrawn"

    def batches(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
        for start in range(0, len(rows), SEED_BATCH):
            yield rows[start : start + SEED_BATCH]

    figures: dict[str, float] = {"seed_hmac_s": hmac_seconds}
    with portal.db.engine.begin() as conn:
        tables: list[tuple[str, Any, list[dict[str, Any]]]] = [
            (
                "patients",
                Patient,
                [{"id": pid, "status": "active", "created_at": now, "updated_at": now} for pid in ids],
            ),
            (
                "identifiers",
                PatientIdentifier,
                [{"index": idx, "patient_id": pid, "kind": "mrn"} for idx, pid in zip(indexes, ids, strict=True)],
            ),
            (
                "decisions",
                ConsentDecision,
                [
                    {
                        "patient_id": ids[number],
                        "purpose_code": code,
                        "state": state,
                        "notice_version_id": notice_of[code],
                        "revision": 1,
                        "updated_at": now,
                    }
                    for (number, code), state in stored.items()
                ],
            ),
        ]
        for name, model, rows in tables:
            start = time.perf_counter()
            for batch in batches(rows):
                conn.execute(insert(model), batch)
            figures[f"seed_{name}_s"] = time.perf_counter() - start
            figures[f"seed_{name}_rows"] = len(rows)
    start = time.perf_counter()
    with portal.db.engine.connect() as conn:  # fresh statistics, as autovacuum would give production
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE patients, patient_identifiers, consent_decisions")
            if not portal.db.is_sqlite
            else text("ANALYZE")
        )
    figures["seed_analyze_s"] = time.perf_counter() - start
    figures["seed_total_s"] = time.perf_counter() - started
    return Seeded(mrns, stored, figures)


# ----------------------------------------------------------------------------- request plans


@dataclass(frozen=True)
class Probe:
    mrn: str
    purpose: str
    recipient: str | None
    expected: str  # permit | deny
    stored: bool  # the patient has a decision of their own for the purpose

    @property
    def path(self) -> str:
        query = {"patient": self.mrn, "purpose": self.purpose}
        if self.recipient is not None:
            query["recipient"] = self.recipient
        return f"/api/v1/consent/decision?{urlencode(query)}"


def make_probes(seeded: Seeded, purposes: Sequence[PurposeInfo], count: int, rng: random.Random) -> list[Probe]:
    """Random (patient, purpose) pairs; half of them hit a stored decision, the rest mostly defaults."""
    by_code = {p.code: p for p in purposes}
    stored_keys = list(seeded.stored)
    probes = []
    for _ in range(count):
        if stored_keys and rng.random() < STORED_REQUEST_SHARE:
            number, code = rng.choice(stored_keys)
        else:
            number, code = rng.randrange(len(seeded.mrns)), rng.choice(purposes).code
        purpose = by_code[code]
        state = seeded.stored.get((number, code))
        if state is None:
            expected = "permit" if purpose.mode == "opt-out" else "deny"
        else:
            expected = "permit" if state == "granted" else "deny"
        recipient = rng.choice(purpose.recipients) if purpose.recipients and rng.random() < RECIPIENT_SHARE else None
        probes.append(Probe(seeded.mrns[number], code, recipient, expected, state is not None))
    return probes


@dataclass(frozen=True)
class Call:
    path: str
    token: str | None = None
    expected: str | None = None  # the decision the response must carry; None: any 200


def decision_calls(probes: Sequence[Probe], tokens: Sequence[str], offset: int = 0) -> list[Call]:
    """Calls spread round-robin over the tokens, so each client gets an even share."""
    return [Call(probe.path, tokens[(offset + i) % len(tokens)], probe.expected) for i, probe in enumerate(probes)]


# ----------------------------------------------------------------------------- 3. the live server


def issue_tokens(portal: Portal, count: int, label: str) -> list[tuple[str, str]]:
    """``count`` new API clients with scope consent:read: (client id, access token) of each."""
    issued = []
    for number in range(count):
        client, secret = portal.api.create_client(f"Bench {label} {number + 1}", ["consent:read"], ACTOR)
        issued.append((client.id, portal.api.issue_tokens(client.id, secret).access_token))
    return issued


# ----------------------------------------------------------------------------- 4. load


@dataclass
class PhaseResult:
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    stopped_by_time: bool = False
    cpu: CpuSnapshot | None = None
    app_ms: list[float] = field(default_factory=list)  # the app's own timing, from its request log

    @property
    def ok(self) -> int:
        return self.sent - sum(self.errors.values())

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else math.nan

    def p(self, q: float) -> float:
        return ms(percentile(self.latencies, q))


async def _drive(
    client: httpx.AsyncClient,
    calls: Sequence[Call],
    concurrency: int,
    time_limit: float,
    cpu: Callable[[], CpuSnapshot],
) -> PhaseResult:
    result = PhaseResult()
    next_call = 0
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal next_call
        while next_call < len(calls):
            if time.monotonic() > deadline:
                result.stopped_by_time = True
                return
            call = calls[next_call]
            next_call += 1
            result.sent += 1
            headers = {"authorization": f"Bearer {call.token}"} if call.token else None
            start = time.perf_counter()
            try:
                response = await client.get(call.path, headers=headers)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                result.errors[f"http_{response.status_code}"] += 1
                continue
            if call.expected is not None:
                decision = response.json().get("decision")
                if decision not in ("permit", "deny"):
                    result.errors["no_decision"] += 1
                elif decision != call.expected:
                    result.errors["wrong_decision"] += 1
                else:
                    result.decisions[decision] += 1

    before = cpu()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    result.cpu = cpu().since(before)
    return result


def run_phase(
    server: LiveServer,
    warmup: Sequence[Call],
    measured: Sequence[Call],
    *,
    concurrency: int,
    time_limit: float,
    cpu: Callable[[], CpuSnapshot],
) -> tuple[PhaseResult, PhaseResult]:
    """Warm-up then measured calls over the same keep-alive connections; two separate results."""

    async def go() -> tuple[PhaseResult, PhaseResult]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"host": server.host}, limits=limits, timeout=30.0, http2=False
        ) as client:
            warm = await _drive(client, warmup, concurrency, min(time_limit, WARMUP_TIME_LIMIT_S), cpu)
            await asyncio.sleep(LOG_SETTLE_S)  # the app logs a request after answering it
            start = server.log_size()
            result = await _drive(client, measured, concurrency, time_limit, cpu)
            await asyncio.sleep(LOG_SETTLE_S)
            result.app_ms = server.app_ms(start, server.log_size())
            return warm, result

    return run_async(go())


def report_phase(out: Reporter, result: PhaseResult, unit: str) -> None:
    out.figure("requests", result.sent)
    out.figure(f"{unit}_per_s", result.per_second)
    out.figure("seconds", result.seconds)
    out.figure("p50_ms", result.p(0.50))
    out.figure("p95_ms", result.p(0.95))
    out.figure("p99_ms", result.p(0.99))
    out.figure("max_ms", ms(max(result.latencies)) if result.latencies else math.nan)
    if result.app_ms:
        out.figure("app_p50_ms", percentile(result.app_ms, 0.50))
        out.figure("app_p99_ms", percentile(result.app_ms, 0.99))
    out.figure("errors", sum(result.errors.values()))
    for kind, count in sorted(result.errors.items()):
        out.figure(f"errors.{kind}", count)
    out.figure("stopped_by_time_limit", result.stopped_by_time)
    cpu = result.cpu
    if cpu is not None and result.ok and cpu.generator / result.seconds > LOADGEN_SATURATED_CORES:
        out.note(
            f"the load generator used {cpu.generator / result.seconds:.2f} cores: this rate is (near) its own "
            "ceiling, not the server's; see requests_per_server_cpu_s"
        )
    if cpu is not None and result.ok:
        per = 1e3 / result.ok
        out.figure("server_cpu_ms_per_request", cpu.server * per)
        if not math.isnan(cpu.postgres):
            out.figure("postgres_cpu_ms_per_request", cpu.postgres * per)
        out.figure("loadgen_cpu_ms_per_request", cpu.generator * per)
        out.figure("loadgen_cpu_cores_used", cpu.generator / result.seconds)
        out.figure("server_cpu_cores_used", cpu.server / result.seconds)
        # What one server process could answer with a whole core to itself (GIL-bound).
        out.figure("requests_per_server_cpu_s", result.ok / cpu.server if cpu.server else math.nan)
        out.figure("machine_cpu_busy_pct", 100 * cpu.machine_busy / cpu.machine_total if cpu.machine_total else 0.0)
        ours = cpu.server + cpu.generator + (0.0 if math.isnan(cpu.postgres) else cpu.postgres)
        # Busy CPU that none of the bench's processes used (other work on the machine skews the figures).
        out.figure(
            "other_cpu_cores_used", max(0.0, _cores(cpu.machine_busy, cpu.machine_total) - ours / result.seconds)
        )


@dataclass(frozen=True)
class WrkPhase:
    result: _wrk.WrkResult
    cpu: CpuSnapshot


def run_wrk_phase(
    server: LiveServer,
    calls: Sequence[Call],
    cpu: Callable[[], CpuSnapshot],
    *,
    connections: int,
    seconds: float,
) -> WrkPhase:
    """The same decision calls driven by wrk, whose few microseconds per request leave the cores to the server."""
    pairs = [(call.path, {"Authorization": f"Bearer {call.token}"} if call.token else {}) for call in calls]
    _wrk.run_wrk(server.base_url, server.host, pairs, connections=connections, seconds=2)  # warm-up
    before = cpu()
    result = _wrk.run_wrk(server.base_url, server.host, pairs, connections=connections, seconds=seconds)
    return WrkPhase(result, cpu().since(before))


def report_load_sweep(
    out: Reporter, server: LiveServer, calls: Sequence[Call], cpu: Callable[[], CpuSnapshot], args: argparse.Namespace
) -> None:
    """Throughput and latency at several numbers of open connections: in a closed loop, latency grows
    with them once the server is saturated (mean ~ connections / throughput), so one level alone says
    little about the latency at a given throughput."""
    best = 0.0
    for connections in args.sweep:
        result = run_wrk_phase(server, calls, cpu, connections=connections, seconds=args.sweep_seconds).result
        level = f"c{connections}"
        out.figure(f"{level}.decisions_per_s", result.per_second)
        out.figure(f"{level}.p50_ms", result.p50_ms)
        out.figure(f"{level}.p99_ms", result.p99_ms)
        out.figure(f"{level}.errors", result.errors)
        if result.errors == 0 and result.p99_ms <= GOAL_P99_MS:
            best = max(best, result.per_second)
    out.figure("best_decisions_per_s_with_p99_in_goal", best)
    out.figure("goal_both_at_one_load", goal(best >= GOAL_DECISIONS_PER_S))


def report_wrk(out: Reporter, phase: WrkPhase, unit: str = "decisions") -> None:
    result, cpu = phase.result, phase.cpu
    out.note(
        f"wrk (C), {_wrk.WRK_THREADS} threads, keep-alive, closed loop; it checks status codes only "
        "(the httpx phase above checks every decision)"
    )
    out.figure("requests", result.requests)
    out.figure(f"{unit}_per_s", result.per_second)
    out.figure("seconds", result.seconds)
    out.figure("p50_ms", result.p50_ms)
    out.figure("p99_ms", result.p99_ms)
    out.figure("max_ms", result.max_ms)
    out.figure("errors", result.errors)
    ok = result.requests - result.errors
    if ok:
        out.figure("server_cpu_ms_per_request", cpu.server * 1e3 / ok)
        if not math.isnan(cpu.postgres):
            out.figure("postgres_cpu_ms_per_request", cpu.postgres * 1e3 / ok)
        out.figure("loadgen_cpu_ms_per_request", result.cpu_seconds * 1e3 / ok)
        out.figure("server_cpu_cores_used", cpu.server / result.seconds)
        out.figure("machine_cpu_busy_pct", 100 * cpu.machine_busy / cpu.machine_total if cpu.machine_total else 0.0)
    out.figure("goal_no_errors", goal(result.errors == 0))
    if unit == "decisions":
        out.figure("goal_throughput", goal(result.per_second >= GOAL_DECISIONS_PER_S))
        out.figure("goal_p99", goal(result.p99_ms <= GOAL_P99_MS))


# ----------------------------------------------------------------------------- 5. profile


def _per_call(count: int, fn: Callable[[], object]) -> list[float]:
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def profile_decide(portal: Portal, probes: Sequence[Probe], token: tuple[str, str], out: Reporter) -> None:
    consent = portal.consent
    actor = f"integration:{token[0]}"

    def decide(probe: Probe) -> None:
        consent.decide(patient=probe.mrn, purpose=probe.purpose, recipient=probe.recipient, actor=actor)

    calls = len(probes)
    plain = [0.0] * calls
    cpu_start = time.thread_time()
    for i, probe in enumerate(probes):
        start = time.perf_counter()
        decide(probe)
        plain[i] = time.perf_counter() - start
    cpu_seconds = time.thread_time() - cpu_start
    out.figure("decide_calls", calls)
    out.figure("decide_mean_ms", ms(statistics.fmean(plain)))
    out.figure("decide_cpu_ms_per_call", ms(cpu_seconds / calls))
    out.figure("decide_p50_ms", ms(percentile(plain, 0.5)))
    out.figure("decide_p99_ms", ms(percentile(plain, 0.99)))
    out.figure("decide_serial_per_s", calls / sum(plain))

    sample = probes[: min(200, calls)]
    with count_statements(portal.db.engine) as counts:
        for probe in sample:
            decide(probe)
    out.figure("decide_statements_per_call", counts["statements"] / len(sample))
    out.figure("decide_pool_checkouts_per_call", counts["checkouts"] / len(sample))

    def decide_all() -> None:
        for probe in probes:
            decide(probe)

    profiler = cProfile.Profile()
    profiler.runcall(decide_all)
    out.note(f"cProfile of {calls} direct ConsentService.decide calls, by own time:")
    out.note(pstats_table(profiler, "tottime", 25))
    out.note("... and by cumulative time:")
    out.note(pstats_table(profiler, "cumulative", 30))

    # The parts of one decision request, one by one (medians over 1,000 calls).
    mrn, repeats = probes[0].mrn, 1_000
    records, ledger, limiter = portal.records, portal.ledger, portal.limiter
    check_event = AuditEvent(
        action="consent.check",
        actor=actor,
        role="integration",
        subject=str(uuid.uuid4()),
        object="purpose:hie-sharing",
        purpose="TREAT",
        details={"decision": "permit", "recipient_given": False},
    )

    def empty_session() -> None:
        with portal.db.read() as session:
            session.execute(text("SELECT 1"))

    bucket = Limit(f"bench:{uuid.uuid4()}", 10**9, 60)
    loop = asyncio.new_event_loop()

    def verify_token() -> object:
        # Outside the app there is no event-loop pool: its read goes through a worker thread, whose
        # CPU time the part's cpu figure (this thread's) does not include.
        return loop.run_until_complete(portal.api.verify_access_token_async(token[1]))

    parts: list[tuple[str, Callable[[], object]]] = [
        ("mrn_index_hmac", lambda: records.mrn_index(mrn)),
        ("find_by_mrn", lambda: records.find_by_mrn(mrn)),
        ("read_session_select_1", empty_session),
        ("ledger_record", lambda: ledger.record(check_event)),
        ("ratelimit_check", lambda: limiter.check([bucket])),
        ("verify_access_token", verify_token),
    ]
    for name, fn in parts:
        cpu_start = time.thread_time()
        seconds = _per_call(repeats, fn)
        out.figure(f"part.{name}_median_ms", ms(statistics.median(seconds)))
        out.figure(f"part.{name}_cpu_ms", ms((time.thread_time() - cpu_start) / repeats))
    with count_statements(portal.db.engine) as counts:
        for _ in range(100):
            verify_token()
    loop.close()
    out.figure("verify_access_token_statements_per_call", counts["statements"] / 100)
    out.figure("verify_access_token_pool_checkouts_per_call", counts["checkouts"] / 100)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per phase")
    parser.add_argument("--warmup", type=int, default=1_000, help="warm-up requests per phase (not measured)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=60.0, help="hard limit of the measured decision phase (s)")
    parser.add_argument(
        "--wrk-seconds", type=float, default=20.0, help="length of the wrk phase (0: none; needs the wrk package)"
    )
    parser.add_argument(
        "--sweep",
        type=lambda text: [int(part) for part in text.split(",") if part],
        default=[8, 16, 24, 32, 64],
        help="wrk connection counts of the load sweep (comma-separated; empty: none)",
    )
    parser.add_argument("--sweep-seconds", type=float, default=10.0, help="length of each sweep level")
    parser.add_argument("--web-processes", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--profile-calls", type=int, default=2_000, help="direct decide() calls to profile; 0: none")
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead of a throwaway PostgreSQL")
    parser.add_argument("--seed", type=int, default=20_260_101)
    args = parser.parse_args(argv)
    if args.patients < 1 or args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--patients, --requests and --concurrency must be positive, --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    rng = random.Random(args.seed)
    wall = time.perf_counter()
    out, health = Reporter("consent"), Reporter("healthz")
    one, prof = Reporter("consent_one_client"), Reporter("profile")
    out.header(
        "consent decision API benchmark",
        machine=machine(),
        patients=f"{args.patients:_}",
        requests=f"{args.requests:_} measured + {args.warmup:_} warm-up per phase, concurrency {args.concurrency}",
        server=f"uvicorn, {args.web_processes} process(es), loopback; load generator in this process (same cores)",
        client="httpx.AsyncClient on uvloop, HTTP/1.1 keep-alive, closed loop: each caller waits for its answer, "
        "so latency includes queueing (mean latency ~ concurrency / throughput)",
    )
    with tempfile.TemporaryDirectory(prefix="portal-bench-consent-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        port = free_port()
        values: dict[str, Any] = {"data_dir": base / "var", "origin": f"http://localhost:{port}"}
        pg: PostgresServer | None = None
        if not args.sqlite:
            pg = start_postgres(base / "pg")
            stack.callback(pg.stop)
            values["database_url"] = pg.create_database("bench")
            values["keystore_url"] = pg.create_database("bench_keys")
        settings = Settings(**values).complete()
        portal = build_portal(settings)
        stack.callback(portal.close)
        migrate.upgrade_all(settings.database_url, settings.keystore_url)
        postgres_pid = pg.process.pid if isinstance(pg, LocalPostgres) else None
        out.figure("backend", "sqlite" if args.sqlite else "postgresql")
        out.figure("database", server_version(portal))
        if isinstance(pg, LocalPostgres):
            out.note("PostgreSQL: throwaway cluster with fsync=off, synchronous_commit=off (flatters commits)")

        purposes = setup_purposes(portal)
        seeded = seed(portal, args.patients, purposes, rng)
        out.figure("purposes", len(purposes))
        out.figure("patients", len(seeded.mrns))
        for name, value in seeded.figures.items():
            out.figure(name, value)
        rows = sum(v for k, v in seeded.figures.items() if k.endswith("_rows"))
        out.figure("seed_rows_per_s", rows / seeded.figures["seed_total_s"])
        out.note(
            "seeded decisions are bulk-inserted consent_decisions rows only: no history, receipts or ledger "
            "entries (the change path is not what this measures)"
        )

        # One client per concurrent caller at least, and enough that none exceeds its window's limit.
        total_calls = args.warmup + args.requests
        n_clients = max(args.concurrency, math.ceil(total_calls / PER_CLIENT_BUDGET))
        start = time.perf_counter()
        issued = issue_tokens(portal, n_clients, "EHR")
        single = issue_tokens(portal, 1, "single EHR")[0]
        profile_token = issue_tokens(portal, 1, "profile")[0]
        out.figure("token_setup_s", time.perf_counter() - start)
        out.figure("api_per_client_limit", LIMITS.api_per_client)
        out.figure("api_limit_window_s", LIMITS.window_seconds)
        out.figure("api_clients", n_clients)
        out.note(
            f"rate limit: ApiRateLimits.api_per_client={LIMITS.api_per_client} per {LIMITS.window_seconds} s "
            f"per client (portal/api/service.py), i.e. {LIMITS.api_per_client / LIMITS.window_seconds:.0f} "
            f"calls/s sustained per client; the load is spread over {n_clients} clients (<= "
            f"{PER_CLIENT_BUDGET} calls each) so the limiter never answers 429"
        )

        tokens = [token for _id, token in issued]
        warm_probes = make_probes(seeded, purposes, args.warmup, rng)
        probes = make_probes(seeded, purposes, args.requests, rng)
        one_budget = LIMITS.api_per_client - ONE_CLIENT_WARMUP - 100
        one_probes = make_probes(seeded, purposes, min(args.requests, one_budget) + ONE_CLIENT_WARMUP, rng)

        server = stack.enter_context(live_server(settings, port, base, args.web_processes))

        def snapshot() -> CpuSnapshot:
            return CpuSnapshot.take(server.process.pid, postgres_pid)

        idle_before = snapshot()
        time.sleep(IDLE_SAMPLE_S)
        idle = snapshot().since(idle_before)
        out.figure("server_idle_cpu_cores", idle.server / IDLE_SAMPLE_S)
        out.figure("machine_idle_phase_busy_cores", _cores(idle.machine_busy, idle.machine_total))

        healthz = [Call("/healthz")]
        warm, measured_health = run_phase(
            server,
            healthz * args.warmup,
            healthz * args.requests,
            concurrency=args.concurrency,
            time_limit=HEALTHZ_TIME_LIMIT_S,
            cpu=snapshot,
        )
        health.figure("warmup_requests_per_s", warm.per_second)
        report_phase(health, measured_health, "requests")

        warm, decided = run_phase(
            server,
            decision_calls(warm_probes, tokens),
            decision_calls(probes, tokens, offset=len(warm_probes)),
            concurrency=args.concurrency,
            time_limit=args.time_limit,
            cpu=snapshot,
        )
        out.figure("warmup_requests", warm.sent)
        out.figure("warmup_decisions_per_s", warm.per_second)
        out.figure("warmup_errors", sum(warm.errors.values()))
        report_phase(out, decided, "decisions")
        answered = sum(decided.decisions.values())
        out.figure("permit_share", decided.decisions["permit"] / answered if answered else math.nan)
        sent = probes[: decided.sent]
        out.figure("stored_decision_share", sum(p.stored for p in sent) / max(1, len(sent)))
        out.figure("with_recipient_share", sum(p.recipient is not None for p in sent) / max(1, len(sent)))
        ratio = decided.per_second / measured_health.per_second if measured_health.per_second else math.nan
        out.figure("vs_healthz_throughput_ratio", ratio)
        if decided.cpu is not None and measured_health.cpu is not None and decided.ok and measured_health.ok:
            out.figure(
                "vs_healthz_server_cpu_per_request",
                (decided.cpu.server / decided.ok) / (measured_health.cpu.server / measured_health.ok),
            )

        if args.wrk_seconds > 0 and _wrk.available():
            connections, seconds = args.concurrency, args.wrk_seconds
            health_wrk = run_wrk_phase(server, healthz, snapshot, connections=connections, seconds=seconds)
            report_wrk(Reporter("healthz_wrk"), health_wrk, "requests")
            calls = decision_calls(probes, tokens)
            report_wrk(
                Reporter("consent_wrk"),
                run_wrk_phase(server, calls, snapshot, connections=connections, seconds=seconds),
            )
            report_load_sweep(Reporter("consent_wrk_sweep"), server, calls, snapshot, args)
        elif args.wrk_seconds > 0:
            out.note("wrk is not installed (apt-get install wrk): no phase with a C load generator")

        one_calls = decision_calls(one_probes, [single[1]])
        warm, alone = run_phase(
            server,
            one_calls[:ONE_CLIENT_WARMUP],
            one_calls[ONE_CLIENT_WARMUP:],
            concurrency=args.concurrency,
            time_limit=min(args.time_limit, ONE_CLIENT_TIME_LIMIT_S),
            cpu=snapshot,
        )
        one.note(
            "all calls with one client's token (its rate-limit row is locked by every call); kept under its "
            f"{LIMITS.api_per_client}/window limit"
        )
        report_phase(one, alone, "decisions")
        server.stop()
        log_lines = len(server.log_path.read_bytes().splitlines())
        out.figure("server_log_lines", log_lines)

        errors = sum(decided.errors.values())
        p99 = decided.p(0.99)
        out.figure("goal_decisions_per_s", GOAL_DECISIONS_PER_S)
        out.figure("goal_p99_ms", GOAL_P99_MS)
        out.figure("goal_throughput", goal(decided.per_second >= GOAL_DECISIONS_PER_S))
        out.figure("goal_p99", goal(p99 <= GOAL_P99_MS))
        out.figure("goal_no_errors", goal(errors == 0))
        out.figure("goal", goal(decided.per_second >= GOAL_DECISIONS_PER_S and p99 <= GOAL_P99_MS and errors == 0))
        if args.sqlite:
            out.note("the goal is stated for PostgreSQL; on SQLite the comparison is for information only")

        if args.profile_calls > 0:
            profile_decide(portal, make_probes(seeded, purposes, args.profile_calls, rng), profile_token, prof)
        out.figure("wall_s", time.perf_counter() - wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
