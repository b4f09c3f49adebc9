"""Benchmark of the access log: ingest rate and the patient's timeline page (a script, not a pytest test).

    .venv/bin/python -m tests.bench.bench_access [--sqlite] [--skip-ingest] [--skip-timeline] [--skip-profile]

Goals (from the issue):

1. ingest through the API in batches of 1,000 at >= 0.5 x the rate of a bare bulk insert of the
   same rows in the same run, and >= 10,000 events/s on PostgreSQL;
2. GET /access p99 <= 100 ms under 32 concurrent clients, with 10,000 events for the patient and
   1,000,000 in the table.

What it does, in one run (PostgreSQL by default: a throwaway cluster; SQLite files with ``--sqlite``):

1. ingest: up to ``--batches`` rounds (after one warm-up round, not measured; no new round after
   ``--ingest-time-limit`` s, but at least 3); each round inserts one
   batch of ``--batch-size`` events three ways, in rotating order so machine noise hits all three:
   (a) NDJSON POST /api/v1/access-events to the real app served by uvicorn in another process
   (bearer token with scope access-events:write, one sender, one batch at a time);
   (b) ``portal.access.ingest`` called in this process (no HTTP);
   (c) the baseline: a bare bulk insert into access_events of equivalent rows (same columns,
   bodies encrypted beforehand under the patient's key, of the same size), one transaction per
   batch, the way ingest itself inserts (``portal.db.insert_rows``: COPY on PostgreSQL, an
   executemany on SQLite); parsing, blind indexes, encryption and the ledger are not in it;
   (d) on PostgreSQL, the same rows by SQLAlchemy Core executemany (the conventional bulk insert,
   and this benchmark's baseline before ingest used COPY), for comparison.
   Then ``--ingest-senders`` integrations post batches at the same time, to ``--web-processes``
   uvicorn processes: the rate of several feeds at once, over the phase's wall time.
   The events name ``--ingest-patients`` patients with both identifier indexes an import stores.
   Then one more direct batch is profiled (cProfile) and its SQL statements counted;
2. timeline: fills access_events to ``--table-events`` rows: ``--patient-events`` for the target
   patient (each encrypted for its own row, so the page can decrypt them) and the rest for
   ``--other-patients`` others, interleaved in the heap as a live table would be. To keep the
   fill quick, each other patient's rows all reuse ONE body encrypted under that patient's key
   (it would not decrypt for the other rows, whose AAD differs; nothing here reads them).
   PostgreSQL: COPY, then VACUUM ANALYZE (as autovacuum would); SQLite: executemany, ANALYZE.
   Then the signed-in patient's GET /access is loaded by ``--concurrency`` clients (httpx on
   asyncio, keep-alive, closed loop): the first page, ?emergency=1, ?organisation=..., and the
   htmx "older accesses" partial (page 2, no chart), each phase bounded by ``--requests`` and
   ``--phase-time-limit`` (requests in flight at the limit are waited for and counted);
3. profile: one timeline page in this process (the route function, then its template), cProfile
   top functions, a breakdown of its parts, and the page with its summary recomputed (the cost
   of the first view after the patient's accesses change).

Prints ``<prefix>.<figure>=<value>`` lines (prefixes ``ingest``, ``timeline``, ``profile``),
``# ...`` lines for context and ``...goal_*=PASS|MISS`` lines against each goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import msgspec
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from sqlalchemy import Column, Connection, Integer, MetaData, Row, String, Table, func, insert, select, text
from sqlalchemy.orm import Session

from portal import migrate
from portal.access.balp import RESTFUL, AccessFacts, parse_audit_event
from portal.access.chart import weekly_chart
from portal.access.fhir_check import audit_event_passes
from portal.access.models import AccessEvent, AlertPreference
from portal.access.routes import access_page
from portal.access.service import ACCESS_EVENTS, CATEGORY, TimelineFilter, _access_row
from portal.accounts.models import Account
from portal.audit.ledger import AuditEvent
from portal.container import Portal, build_portal
from portal.db import insert_rows, new_id
from portal.records.models import Patient, PatientIdentifier
from portal.records.synthetic import MRN_SYSTEM
from portal.security.csrf import CSRF_COOKIE
from portal.security.sessions import COOKIE_NAME, Principal
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
    timed,
)
from tests.bench._server import LiveServer, live_server
from tests.support.balp import balp_event
from tests.support.servers import LocalPostgres, PostgresServer, start_postgres

T = TypeVar("T")

ACTOR = "system:bench"
DIRECT_SENDER = "integration:bench-direct"

GOAL_INGEST_RATIO = 0.5
GOAL_PG_EVENTS_PER_S = 10_000.0
GOAL_P99_MS = 100.0

FILL_BATCH = 10_000
FILL_SQLITE_CACHE_KIB = 512 * 1024
HISTORY_WEEKS = 104  # the target patient's accesses spread over two years
EMERGENCY_SHARE = 0.02
SYSTEM_SHARE = 0.10  # of the fill's non-emergency accesses: automated systems
REQUEST_TIMEOUT_S = 300.0
LOG_SETTLE_S = 0.5
MIN_ROUNDS = 3  # measured ingest rounds run even past --ingest-time-limit
CONCURRENT_BATCHES_PER_SENDER = 8
WARM_BATCHES_PER_SENDER = 3  # the first starts the process's reading helper, without waiting for it
SERIAL_REQUESTS = 4  # per page kind, one at a time, after one warm-up request

# (name, weight): the organisations that look at the records, and how often.
ORGANISATIONS: tuple[tuple[str, int], ...] = (
    ("St Example Hospital", 40),
    ("Lab Co", 15),
    ("Northside GP Practice", 15),
    ("City Emergency Hospital", 8),
    ("Riverside Imaging", 8),
    ("Example Pharmacy", 8),
    ("Hilltop Rehabilitation Centre", 4),
    ("Regional Cancer Registry", 2),
)
FILTER_ORGANISATION = "Lab Co"
SITES = ("Ward 4", "Outpatients", "Radiology", "Emergency department", "Pharmacy counter", "Clinic 2")
PEOPLE = (
    ("Dr A. Jones", "Cardiologist"),
    ("Dr B. Okafor", "General practitioner"),
    ("Nurse C. Silva", "Ward nurse"),
    ("D. Novak", "Radiographer"),
    ("E. Laine", "Pharmacist"),
    ("F. Brown", "Medical secretary"),
    ("Dr G. Haddad", "Emergency physician"),
    ("H. Kim", "Billing clerk"),
)
SUBTYPES: tuple[tuple[str, int], ...] = (("read", 70), ("search-type", 20), ("update", 7), ("create", 3))
PURPOSES: tuple[tuple[str, int], ...] = (("TREAT", 80), ("HOPERAT", 8), ("HPAYMT", 7), ("PATRQT", 5))
BREAK_GLASS = ("unconscious on arrival", "trauma call", "cardiac arrest")


# ----------------------------------------------------------------------------- small helpers


def median_of(repeat: int, fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples)


def median_cpu_of(repeat: int, fn: Callable[[], object]) -> float:
    """Median CPU seconds of this process (all its threads) for ``repeat`` calls."""
    return median_of(repeat, fn, time.process_time)


def event_loop_runner() -> asyncio.Runner:
    """A runner on uvloop when it is installed (as uvicorn uses), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with event_loop_runner() as runner:
        return runner.run(coro)


def weighted(rng: random.Random, choices: Sequence[tuple[str, int]]) -> str:
    return rng.choices([name for name, _w in choices], weights=[w for _n, w in choices])[0]


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Spec:
    """One generated access: the AuditEvent sent (``tests.support.balp.balp_event``) and the facts ingest reads."""

    event_id: str
    mrn: str
    subtype: str
    purpose: str
    person: str
    role: str
    org: str
    site: str
    occurred_at: datetime
    btg: str | None
    system_agent: bool = False  # only for rows written directly (the BALP builder makes people)

    def resource(self) -> dict[str, Any]:
        recorded = self.occurred_at.isoformat(timespec="seconds").replace("+00:00", "Z")
        return balp_event(
            self.event_id,
            self.mrn,
            subtype=self.subtype,
            purpose=self.purpose,
            person=self.person,
            role=self.role,
            org=self.org,
            site=self.site,
            recorded=recorded,
            btg=self.btg,
        )

    def facts(self) -> AccessFacts:
        """The facts ``parse_audit_event`` reads from ``resource()`` (or a system agent's)."""
        return AccessFacts(
            event_id=self.event_id,
            occurred_at=self.occurred_at,
            action=RESTFUL[self.subtype],
            purpose=self.purpose,
            emergency=self.btg is not None or self.purpose == "ETREAT",
            break_glass_reason=self.btg,
            agent_kind="system" if self.system_agent else "person",
            person=None if self.system_agent else self.person,
            person_id=None if self.system_agent else self.person.lower().replace(" ", "-"),
            role="Results interface" if self.system_agent else self.role,
            organisation=self.org,
            department=self.site,
            data_category="clinical",
            what="your lab results",
            recipient=None,
            patient_identifier=(MRN_SYSTEM, self.mrn),
        )


def random_spec(rng: random.Random, event_id: str, mrn: str, when: datetime, *, systems: bool = False) -> Spec:
    person, role = rng.choice(PEOPLE)
    emergency = rng.random() < EMERGENCY_SHARE
    return Spec(
        event_id=event_id,
        mrn=mrn,
        subtype=weighted(rng, SUBTYPES),
        purpose="ETREAT" if emergency else weighted(rng, PURPOSES),
        person=person,
        role=role,
        org=weighted(rng, ORGANISATIONS),
        site=rng.choice(SITES),
        occurred_at=when,
        btg=rng.choice(BREAK_GLASS) if emergency else None,
        system_agent=systems and not emergency and rng.random() < SYSTEM_SHARE,
    )


def details_plaintext(facts: AccessFacts) -> bytes:
    """What ``_access_row`` encrypts for a row."""
    details = {k: v for k, v in facts._asdict().items() if k not in {"patient_identifier", "occurred_at"}}
    return msgspec.json.encode(details)


def event_row(
    portal: Portal, patient_id: str, facts: AccessFacts, *, sender: str, origin: str = "api"
) -> dict[str, Any]:
    """An access_events row exactly as ingest writes it (``_access_row``), encrypted for its own row id."""
    access = portal.access
    return _access_row(
        patient_id,
        access._source_key(sender, facts.event_id),
        facts,
        origin=origin,
        as_dict=facts._asdict(),
        key=portal.keys.data_key(patient_id, CATEGORY, create=True),
        org_index=access._org_index(facts.organisation),
        role_index=access._role_index(facts.role),
        created_at=facts.occurred_at + timedelta(seconds=5),
    )


COLUMNS = tuple(c.name for c in AccessEvent.__table__.columns)


# ----------------------------------------------------------------------------- the throwaway portal


@dataclass
class Bench:
    portal: Portal
    settings: Settings
    backend: str
    port: int
    base: Path
    pg: PostgresServer | None


@contextlib.contextmanager
def bench_setup(*, sqlite: bool) -> Iterator[Bench]:
    """A migrated portal whose origin is http://localhost:PORT, so a live server can serve it."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="portal-bench-access-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        port = free_port()
        values: dict[str, Any] = {"data_dir": base / "var", "origin": f"http://localhost:{port}"}
        pg: PostgresServer | None = None
        if not sqlite:
            pg = start_postgres(base / "pg")
            stack.callback(pg.stop)
            values["database_url"] = pg.create_database("bench")
            values["keystore_url"] = pg.create_database("bench_keys")
        settings = Settings(**values).complete()
        portal = build_portal(settings)
        stack.callback(portal.close)
        migrate.upgrade_all(settings.database_url, settings.keystore_url)
        yield Bench(portal, settings, "sqlite" if sqlite else "postgresql", port, base, pg)


def seed_patients(portal: Portal, count: int, label: str, *, indexes: bool) -> list[tuple[str, str]]:
    """``count`` patients (id, MRN); with ``indexes``, the identifier and MRN blind indexes an import stores."""
    now = datetime.now(UTC)
    patients = [(new_id(), f"MRN-{label}{i:06d}") for i in range(count)]
    with portal.db.engine.begin() as conn:
        conn.execute(
            insert(Patient),
            [{"id": pid, "status": "active", "created_at": now, "updated_at": now} for pid, _ in patients],
        )
        if indexes:
            records = portal.records
            rows = []
            for pid, mrn in patients:
                rows.append(
                    {"index": records.identifier_index(MRN_SYSTEM, mrn), "patient_id": pid, "kind": "identifier"}
                )
                rows.append({"index": records.mrn_index(mrn), "patient_id": pid, "kind": "mrn"})
            conn.execute(insert(PatientIdentifier), rows)
    return patients


# ----------------------------------------------------------------------------- the live server


# ----------------------------------------------------------------------------- 1. ingest


@dataclass
class Method:
    name: str
    seconds: list[float] = field(default_factory=list)
    events: int = 0
    # For batches sent at the same time: the phase's wall time, as their durations overlap.
    wall_seconds: float | None = None
    # And how the senders' connections fell on the web processes (kernel hashing: two may share one).
    connections_by_process: list[int] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        if self.wall_seconds is not None:
            return self.events / self.wall_seconds
        return self.events / sum(self.seconds) if self.seconds else math.nan


def post_batch(client: httpx.Client, token: str, body: bytes, size: int) -> None:
    """Post one NDJSON batch through the API; raises unless all ``size`` events were accepted."""
    response = client.post(
        "/api/v1/access-events",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/x-ndjson"},
    )
    if response.status_code != 200 or response.json().get("accepted") != size:
        raise RuntimeError(f"API batch: {response.status_code} {response.text[:300]}")


def _shares(bodies: Sequence[bytes], senders: int) -> list[Sequence[bytes]]:
    return [bodies[i::senders] for i in range(senders)]


def concurrent_ingest(
    bench: Bench, token: str, bodies: Sequence[bytes], senders: int, web_processes: int, size: int
) -> Method:
    """``senders`` integrations posting their batches at the same time (one thread and connection each),
    as a hospital's several feeds would; the rate is all events over the wall time of the whole phase."""
    method = Method("concurrent")
    with live_server(bench.settings, bench.port, bench.base, web_processes) as server:

        def post(client: httpx.Client, body: bytes) -> float:
            start = time.perf_counter()
            post_batch(client, token, body, size)
            return time.perf_counter() - start

        # One client (one keep-alive connection) per sender for the whole phase, so the warm-up batches
        # warm the very process that then serves the measured ones (its reading helper, its key cache).
        clients = [
            httpx.Client(base_url=server.base_url, headers={"host": server.host}, timeout=REQUEST_TIMEOUT_S)
            for _ in range(senders)
        ]
        warm, measured = bodies[: senders * WARM_BATCHES_PER_SENDER], bodies[senders * WARM_BATCHES_PER_SENDER :]
        try:
            with ThreadPoolExecutor(senders) as pool:
                list(pool.map(lambda c, own: [post(c, b) for b in own], clients, _shares(warm, senders)))
                start = time.perf_counter()
                timed = pool.map(lambda c, own: [post(c, b) for b in own], clients, _shares(measured, senders))
                method.seconds = [seconds for share in timed for seconds in share]
                wall = time.perf_counter() - start
            method.connections_by_process = server.connections_by_process()
        finally:
            for client in clients:
                client.close()
        server.stop()
    method.events = len(measured) * size
    method.wall_seconds = wall
    return method


def bench_ingest(bench: Bench, args: argparse.Namespace, rng: random.Random, out: Reporter) -> None:
    portal = bench.portal
    size = args.batch_size
    patients = seed_patients(portal, args.ingest_patients, "I", indexes=True)
    patient_of = {mrn: pid for pid, mrn in patients}
    mrns = [mrn for _pid, mrn in patients]
    client_row, secret = portal.api.create_client("Bench EHR", ("access-events:write",), ACTOR)
    token = portal.api.issue_tokens(client_row.id, secret).access_token
    base_sender = "integration:bench-baseline"
    start_time = datetime.now(UTC) - timedelta(days=30)
    counter = 0

    def specs(prefix: str) -> list[Spec]:
        nonlocal counter
        made = []
        for _ in range(size):
            counter += 1
            when = start_time + timedelta(seconds=counter * 7)
            made.append(random_spec(rng, f"{prefix}-{counter}", rng.choice(mrns), when))
        return made

    names = ("api", "direct", "baseline") + (() if portal.db.is_sqlite else ("baseline_executemany",))
    methods = {name: Method(name) for name in names}
    out.note(
        f"ingest: up to {args.batches} measured rounds (+1 warm-up) of {size:_} events per method, new rounds "
        f"started for {args.ingest_time_limit:.0f} s; {len(patients)} patients; the table starts empty"
    )
    body_sizes: dict[str, float] = {}
    with (
        live_server(bench.settings, bench.port, bench.base) as server,
        httpx.Client(base_url=server.base_url, headers={"host": server.host}, timeout=REQUEST_TIMEOUT_S) as client,
    ):
        deadline = math.inf
        for round_no in range(args.batches + 1):
            if round_no > MIN_ROUNDS and time.monotonic() > deadline:
                break
            if round_no == 1:
                deadline = time.monotonic() + args.ingest_time_limit
            # Prepared outside the timed parts: events, NDJSON body, and the baseline's encrypted rows.
            api_specs, direct_specs = specs("api"), specs("direct")
            api_body = "\n".join(json.dumps(s.resource()) for s in api_specs).encode()
            direct_resources = [s.resource() for s in direct_specs]
            base_rows, many_rows = (
                [event_row(portal, patient_of[s.mrn], s.facts(), sender=base_sender) for s in specs(prefix)]
                for prefix in ("base", "many")
            )

            def run_api(body: bytes = api_body) -> None:
                post_batch(client, token, body, size)

            def run_direct(resources: list[dict[str, Any]] = direct_resources) -> None:
                result = portal.access.ingest(resources, sender=DIRECT_SENDER)
                if result.count("accepted") != size:
                    raise RuntimeError(f"direct batch accepted {result.count('accepted')} of {size}")

            def run_baseline(rows: list[dict[str, Any]] = base_rows) -> None:
                with portal.db.engine.begin() as conn:
                    insert_rows(conn, ACCESS_EVENTS, rows)

            def run_executemany(rows: list[dict[str, Any]] = many_rows) -> None:
                with portal.db.engine.begin() as conn:
                    conn.execute(insert(AccessEvent), rows)

            every_run: dict[str, Callable[[], None]] = {
                "api": run_api,
                "direct": run_direct,
                "baseline": run_baseline,
                "baseline_executemany": run_executemany,
            }
            runs = [(name, every_run[name]) for name in methods]
            shift = round_no % len(runs)
            for name, fn in runs[shift:] + runs[:shift]:
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
                if round_no > 0:
                    methods[name].seconds.append(seconds)
                    methods[name].events += size
        server.stop()
    if args.ingest_senders > 1:
        bodies = [
            "\n".join(json.dumps(s.resource()) for s in specs("many")).encode()
            for _ in range(args.ingest_senders * (WARM_BATCHES_PER_SENDER + CONCURRENT_BATCHES_PER_SENDER))
        ]
        concurrent = concurrent_ingest(bench, token, bodies, args.ingest_senders, args.web_processes, size)
        out.note(
            f"concurrent ingest: {args.ingest_senders} senders, each posting {CONCURRENT_BATCHES_PER_SENDER} "
            f"batches of {size:_} one after another, to {args.web_processes} web process(es); same table, after "
            "the rounds above"
        )
        out.figure("api_concurrent_senders", args.ingest_senders)
        out.figure("api_concurrent_events_per_s", concurrent.per_second)
        out.figure("api_concurrent_batch_p50_ms", ms(percentile(concurrent.seconds, 0.5)))
        out.figure("api_concurrent_connections_by_process", "/".join(map(str, concurrent.connections_by_process)))
    with portal.db.read() as session:
        for origin_name, sender_filter in (("ingested", AccessEvent.origin == "api"),):
            avg = session.scalar(select(func.avg(func.length(AccessEvent.body))).where(sender_filter))
            body_sizes[origin_name] = float(avg or 0)

    out.figure("rounds", len(methods["api"].seconds))
    for name, method in methods.items():
        out.figure(f"{name}_events_per_s", method.per_second)
        out.figure(f"{name}_batch_p50_ms", ms(percentile(method.seconds, 0.5)))
        out.figure(f"{name}_batch_max_ms", ms(max(method.seconds)))
    out.figure("body_bytes_mean", body_sizes["ingested"])
    api, direct, base = (methods[n].per_second for n in ("api", "direct", "baseline"))
    out.figure("api_vs_baseline", api / base)
    out.figure("direct_vs_baseline", direct / base)
    out.figure("api_vs_direct", api / direct)
    if "baseline_executemany" in methods:
        many = methods["baseline_executemany"].per_second
        out.figure("api_vs_baseline_executemany", api / many)
        out.figure("direct_vs_baseline_executemany", direct / many)
    out.figure("goal_ratio", goal(api / base >= GOAL_INGEST_RATIO))
    if bench.backend == "postgresql":
        out.figure("goal_pg_events_per_s", goal(api >= GOAL_PG_EVENTS_PER_S))
    else:
        out.note(f"the {GOAL_PG_EVENTS_PER_S:,.0f} events/s goal is stated for PostgreSQL only")

    # One more direct batch: what it spends its time on, and how many statements it sends.
    resources = [s.resource() for s in specs("prof")]
    profiler = cProfile.Profile()
    with count_statements(portal.db.engine) as counts, count_statements(portal.keystore_db.engine) as keystore:
        profiler.runcall(portal.access.ingest, resources, sender=DIRECT_SENDER)
    for name, count in sorted(counts.items()):
        out.figure(f"direct_batch.{name}", count)
    out.figure("direct_batch.keystore_statements", keystore["statements"])

    # The per-event parts of ingest, timed one by one over the same batch (no profiler).
    facts = [parse_audit_event(r) for r in resources]
    pid = patient_of[facts[0].patient_identifier[1]]
    access = portal.access

    plaintext = details_plaintext(facts[0])

    def alert_preferences() -> None:
        with portal.db.read() as session:
            for f in facts:
                session.get(AlertPreference, patient_of[f.patient_identifier[1]])

    def ledger_append() -> None:
        """The ledger entries of the batch, flushed and rolled back."""
        audit = [
            AuditEvent(
                action="access.recorded",
                actor=DIRECT_SENDER,
                role="integration",
                subject=pid,
                object=f"access-event:{new_id()}",
                purpose=f.purpose,
                details={"action": f.action, "emergency": f.emergency},
                payload=f._asdict(),
            )
            for f in facts
        ]
        with Session(portal.db.engine) as session:
            portal.ledger.append_many(session, audit)
            session.flush()
            session.rollback()

    per_event: list[tuple[str, Callable[[], object]]] = [
        ("ledger_append_many_flush", ledger_append),
        ("parse_audit_event", lambda: [parse_audit_event(r) for r in resources]),
        ("fhir_check", lambda: [audit_event_passes(r) for r in resources]),
        ("fhir_resources_validate", lambda: [FhirAuditEvent.model_validate(r) for r in resources]),
        ("find_by_identifier", lambda: [portal.records.find_by_identifier(*f.patient_identifier) for f in facts]),
        ("alert_preference_get", alert_preferences),
        ("details_as_dict_json", lambda: [details_plaintext(f) for f in facts]),
        (
            "seal_aes_gcm",
            lambda: [access.seal(pid, "access_events", new_id(), plaintext) for _ in facts],
        ),
        (
            "blind_indexes_x3",
            lambda: [
                (access._source_key("s", f.event_id), access._org_index(f.organisation), access._role_index(f.role))
                for f in facts
            ],
        ),
    ]
    for name, part in per_event:
        out.figure(f"part.{name}_us_per_event", 1e6 * median_of(3, part) / len(facts))
    out.note(f"cProfile of one direct ingest batch of {size:_}, by own time:")
    out.note(pstats_table(profiler, "tottime", 18))
    out.note("... and by cumulative time:")
    out.note(pstats_table(profiler, "cumulative", 22))


# ----------------------------------------------------------------------------- 2. timeline: fill


@dataclass
class Target:
    patient_id: str
    account_id: str
    events: int
    emergency: int
    organisation_events: int
    table_rows: int


def fill(bench: Bench, args: argparse.Namespace, rng: random.Random, out: Reporter) -> Target:
    portal = bench.portal
    started = time.perf_counter()
    (target_id, _mrn), *_ = seed_patients(portal, 1, "T", indexes=True)
    others = [pid for pid, _mrn in seed_patients(portal, args.other_patients, "O", indexes=False)]
    account_id = new_id()
    with portal.db.write() as session:
        session.add(
            Account(id=account_id, kind="patient", patient_id=target_id, status="active", user_handle=os.urandom(32))
        )
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(weeks=HISTORY_WEEKS).total_seconds()

    def when() -> datetime:
        return now - timedelta(seconds=rng.uniform(0, span))

    # The target patient: every row encrypted for itself (the page decrypts them).
    encrypt_start = time.perf_counter()
    target_rows = []
    for i in range(args.patient_events):
        spec = random_spec(rng, f"t-{i}", "MRN-T000000", when(), systems=True)
        target_rows.append(event_row(portal, target_id, spec.facts(), sender="integration:bench-fill"))
    target_encrypt_s = time.perf_counter() - encrypt_start
    emergency = sum(1 for row in target_rows if row["emergency"])
    org_index = portal.access._org_index(FILTER_ORGANISATION)
    organisation_events = sum(1 for row in target_rows if row["org_index"] == org_index)

    # The others: one body per patient key, reused for all that patient's rows (see the module doc).
    keys_start = time.perf_counter()
    templates = []
    for pid in others:
        spec = random_spec(rng, f"o-{pid}", "MRN-O", when())
        templates.append(event_row(portal, pid, spec.facts(), sender="integration:bench-fill"))
    other_keys_s = time.perf_counter() - keys_start
    other_total = max(0, args.table_events - len(target_rows))
    org_indexes = [portal.access._org_index(name) for name, _w in ORGANISATIONS]
    role_indexes = [portal.access._role_index(role) for _p, role in PEOPLE]
    load_start = time.perf_counter()
    written = generate_rows(portal, target_rows, templates, org_indexes, role_indexes, other_total, now)
    load_s = time.perf_counter() - load_start
    analyze_start = time.perf_counter()
    with portal.db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE" if portal.db.is_sqlite else "VACUUM ANALYZE access_events")
        )
        if not portal.db.is_sqlite:
            # A server in service wrote such a load out long ago; left to the next timed checkpoint, the
            # ~1.2 GB of dirty pages would be written during a measured phase.
            conn.execute(text("CHECKPOINT"))
    analyze_s = time.perf_counter() - analyze_start
    with portal.db.read() as session:
        table_rows = int(session.scalar(select(func.count()).select_from(AccessEvent)) or 0)
        if not portal.db.is_sqlite:
            size = session.scalar(text("SELECT pg_total_relation_size('access_events')"))
            out.figure("fill_table_mib_with_indexes", int(size or 0) / 2**20)
    out.figure("fill_target_events", len(target_rows))
    out.figure("fill_other_patients", len(others))
    out.figure("fill_rows_written", written)
    out.figure("table_rows", table_rows)
    out.figure("fill_target_encrypt_s", target_encrypt_s)
    out.figure("fill_other_keys_s", other_keys_s)
    out.figure("fill_load_s", load_s)
    out.figure("fill_load_rows_per_s", written / load_s if load_s else math.nan)
    out.figure("fill_analyze_s", analyze_s)
    out.figure("fill_total_s", time.perf_counter() - started)
    out.note(
        "fill: the other patients' rows reuse one encrypted body per patient key (not decryptable for those "
        "rows; never read here); the target's rows are each encrypted for their own row"
    )
    return Target(target_id, account_id, len(target_rows), emergency, organisation_events, table_rows)


def _scratch_table(name: str, columns: Sequence[Column[Any]]) -> Table:
    return Table(name, MetaData(), Column("n", Integer), *columns, prefixes=["TEMPORARY"])


# The other patients' rows, made by the database from the templates (one per patient), with random
# ids, source keys, times, organisation and role indexes and emergency flags; unioned with the
# target's rows of the batch and inserted in random order, so the target's rows spread over the heap.
_PG_BATCH = """
INSERT INTO access_events ({cols})
SELECT {cols} FROM (
    SELECT {cols} FROM bench_target WHERE n >= :t0 AND n < :t1
    UNION ALL
    SELECT gen_random_uuid()::text, t.patient_id, md5(s.r1::text) || md5(s.r2::text),
           s.at, date_trunc('week', s.at AT TIME ZONE 'UTC')::date, t.action, t.purpose,
           s.r4 < :emergency, t.agent_kind, 'api', o.value, r.value, t.key_version, t.body, CAST(:now AS timestamptz)
    FROM (
        SELECT g, random() AS r1, random() AS r2, random() AS r4, random() AS r5, random() AS r6,
               CAST(:now AS timestamptz) - random() * :span * interval '1 second' AS at
        FROM generate_series(:g0, :g1 - 1) AS g
    ) AS s
    JOIN bench_templates t ON t.n = s.g % :templates
    JOIN bench_orgs o ON o.n = floor(s.r5 * :orgs)::int
    JOIN bench_roles r ON r.n = floor(s.r6 * :roles)::int
) AS batch ORDER BY random()
"""
_SQLITE_BATCH = """
WITH RECURSIVE s(g, r3, r4, r5, r6, r7) AS (
    SELECT :g0, abs(random()) % :span, abs(random()) % 1000000, abs(random()), abs(random()), abs(random()) % 1000000
    UNION ALL
    SELECT g + 1, abs(random()) % :span, abs(random()) % 1000000, abs(random()), abs(random()), abs(random()) % 1000000
    FROM s WHERE g + 1 < :g1
)
INSERT INTO access_events ({cols})
SELECT {cols} FROM (
    SELECT {cols} FROM bench_target WHERE n >= :t0 AND n < :t1
    UNION ALL
    SELECT lower(hex(randomblob(16))), t.patient_id, lower(hex(randomblob(32))),
           strftime('%Y-%m-%d %H:%M:%S', :now_epoch - s.r3, 'unixepoch') || printf('.%06d', s.r4),
           date(:now_epoch - s.r3, 'unixepoch', '-6 days', 'weekday 1'),
           t.action, t.purpose, s.r7 < :emergency * 1000000, t.agent_kind, 'api', o.value, r.value,
           t.key_version, t.body, :now_text
    FROM s
    JOIN bench_templates t ON t.n = s.g % :templates
    JOIN bench_orgs o ON o.n = s.r5 % :orgs
    JOIN bench_roles r ON r.n = s.r6 % :roles
) ORDER BY random()
"""


def generate_rows(
    portal: Portal,
    target_rows: Sequence[dict[str, Any]],
    templates: Sequence[dict[str, Any]],
    org_indexes: Sequence[str],
    role_indexes: Sequence[str],
    other_total: int,
    now: datetime,
) -> int:
    """Insert the target's rows and ``other_total`` generated ones, in batches of FILL_BATCH. Returns the rows."""
    table = AccessEvent.__table__
    target = _scratch_table("bench_target", [c._copy() for c in table.columns])
    template = _scratch_table(
        "bench_templates",
        [table.c[n]._copy() for n in ("patient_id", "action", "purpose", "agent_kind", "key_version", "body")],
    )
    orgs = _scratch_table("bench_orgs", [Column("value", String(64))])
    roles = _scratch_table("bench_roles", [Column("value", String(64))])
    total = len(target_rows) + other_total
    n_batches = max(1, math.ceil(total / FILL_BATCH))
    per_batch = math.ceil(len(target_rows) / n_batches)
    cols = ", ".join(COLUMNS)
    span = int(timedelta(weeks=HISTORY_WEEKS).total_seconds())
    sql = text((_SQLITE_BATCH if portal.db.is_sqlite else _PG_BATCH).format(cols=cols))
    with portal.db.engine.begin() as conn:
        default_cache = 0
        if portal.db.is_sqlite:  # a bigger page cache for the load (random keys in four indexes)
            default_cache = int(conn.exec_driver_sql("PRAGMA cache_size").scalar() or 0)
            conn.exec_driver_sql(f"PRAGMA cache_size={-FILL_SQLITE_CACHE_KIB}")
        else:
            # The throwaway cluster commits asynchronously; VACUUM cannot mark a page all-visible until the
            # commit of its rows is flushed, so without this the VACUUM ANALYZE after the fill would leave the
            # visibility map empty (no index-only scans) where autovacuum on a live server would not.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
        for scratch in (target, template, orgs, roles):
            scratch.create(conn)
        conn.execute(insert(target), [{"n": i, **row} for i, row in enumerate(target_rows)])
        conn.execute(
            insert(template),
            [
                {"n": i, **{c.name: row[c.name] for c in template.columns if c.name != "n"}}
                for i, row in enumerate(templates)
            ],
        )
        conn.execute(insert(orgs), [{"n": i, "value": v} for i, v in enumerate(org_indexes)])
        conn.execute(insert(roles), [{"n": i, "value": v} for i, v in enumerate(role_indexes)])
        made = 0
        for b in range(n_batches):
            want = min(FILL_BATCH - per_batch, other_total - made)
            conn.execute(
                sql,
                {
                    "t0": b * per_batch,
                    "t1": (b + 1) * per_batch,
                    "g0": made,
                    "g1": made + max(want, 0),
                    "now": now,
                    "now_epoch": int(now.timestamp()),
                    "now_text": now.replace(tzinfo=None).isoformat(" ", "microseconds"),
                    "span": span,
                    "emergency": EMERGENCY_SHARE,
                    "templates": len(templates),
                    "orgs": len(org_indexes),
                    "roles": len(role_indexes),
                },
            )
            made += max(want, 0)
        for scratch in (target, template, orgs, roles):
            scratch.drop(conn)
        if portal.db.is_sqlite:
            conn.exec_driver_sql(f"PRAGMA cache_size={default_cache}")
    return len(target_rows) + made


# ----------------------------------------------------------------------------- 2. timeline: load


@dataclass(frozen=True)
class PageKind:
    name: str
    path: str
    expect: str  # text every good answer contains
    htmx: bool = False
    full_page: bool = True  # carries the chart and the organisation list
    signed_in: bool = True


def page_kinds(target: Target) -> list[PageKind]:
    org_query = f"/access?organisation={FILTER_ORGANISATION.replace(' ', '+')}"
    return [
        PageKind("first_page", "/access", f"{target.events} accesses match"),
        PageKind("emergency", "/access?emergency=1", f"{target.emergency} accesses match"),
        PageKind("organisation", org_query, f"{target.organisation_events} accesses match"),
        PageKind("htmx_page2", "/access?page=2", '<tbody id="access-rows">', htmx=True, full_page=False),
        # No database, no session: the framework's ceiling on this machine.
        PageKind("healthz", "/healthz", '"ok"', full_page=False, signed_in=False),
    ]


@dataclass
class PhaseResult:
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stopped_by_time: bool = False
    app_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.sent - sum(self.errors.values())

    def p(self, q: float) -> float:
        return ms(percentile(self.latencies, q))


async def _drive(
    client: httpx.AsyncClient, kind: PageKind, cookies: Sequence[str], requests: int, concurrency: int, limit: float
) -> PhaseResult:
    result = PhaseResult()
    next_call = 0
    deadline = time.monotonic() + limit
    extra = {"hx-request": "true"} if kind.htmx else {}

    async def worker(number: int) -> None:
        nonlocal next_call
        headers = {"cookie": f"{COOKIE_NAME}={cookies[number % len(cookies)]}"} if kind.signed_in else {}
        headers.update(extra)
        while next_call < requests:
            if time.monotonic() > deadline:
                result.stopped_by_time = True
                return
            next_call += 1
            result.sent += 1
            start = time.perf_counter()
            try:
                response = await client.get(kind.path, headers=headers)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                result.errors[f"http_{response.status_code}"] += 1
            elif kind.expect not in response.text:
                result.errors["unexpected_body"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def run_phase(
    server: LiveServer, kind: PageKind, cookies: Sequence[str], *, requests: int, concurrency: int, limit: float
) -> PhaseResult:
    async def go() -> PhaseResult:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"host": server.host}, limits=limits, timeout=REQUEST_TIMEOUT_S
        ) as client:
            start = server.log_size()
            result = await _drive(client, kind, cookies, requests, concurrency, limit)
            await asyncio.sleep(LOG_SETTLE_S)  # the app logs a request after answering it
            result.app_ms = server.app_ms(start, server.log_size())
            return result

    return run_async(go())


def serial_latencies(server: LiveServer, kind: PageKind, cookie: str, count: int) -> list[float]:
    """One request at a time (after one warm-up): the page's own cost, without queueing."""
    headers = {"host": server.host}
    if kind.signed_in:
        headers["cookie"] = f"{COOKIE_NAME}={cookie}"
    if kind.htmx:
        headers["hx-request"] = "true"
    found = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(count + 1):
            start = time.perf_counter()
            response = client.get(kind.path)
            seconds = time.perf_counter() - start
            if response.status_code != 200 or kind.expect not in response.text:
                raise RuntimeError(f"{kind.name}: {response.status_code} {response.text[:300]}")
            if i:
                found.append(seconds)
    return found


def bench_timeline(bench: Bench, target: Target, args: argparse.Namespace, out: Reporter) -> None:
    portal = bench.portal
    cookies = []
    with portal.db.write() as session:
        for _ in range(args.concurrency):
            cookies.append(portal.sessions.create(session, kind="patient", subject_id=target.account_id))
    out.note(
        f"load: {args.concurrency} clients (httpx.AsyncClient, keep-alive, closed loop, one session each, same "
        f"patient); per phase at most {args.requests:_} requests or {args.phase_time_limit:.0f} s of sending; "
        "latency includes queueing in the server; load generator in this process (same cores)"
    )
    with live_server(bench.settings, bench.port, bench.base, args.web_processes) as server:
        if args.wrk_seconds > 0 and _wrk.available():
            for kind in page_kinds(target):
                if kind.signed_in:
                    wrk_phase(server, kind, cookies, args, out)
        for kind in page_kinds(target):
            serial = serial_latencies(server, kind, cookies[0], SERIAL_REQUESTS)
            out.figure(f"{kind.name}.serial_p50_ms", ms(statistics.median(serial)))
            result = run_phase(
                server,
                kind,
                cookies,
                requests=args.requests,
                concurrency=args.concurrency,
                limit=args.phase_time_limit,
            )
            errors = sum(result.errors.values())
            out.figure(f"{kind.name}.requests", result.sent)
            out.figure(f"{kind.name}.requests_per_s", result.ok / result.seconds if result.seconds else math.nan)
            out.figure(f"{kind.name}.seconds", result.seconds)
            out.figure(f"{kind.name}.p50_ms", result.p(0.50))
            out.figure(f"{kind.name}.p95_ms", result.p(0.95))
            out.figure(f"{kind.name}.p99_ms", result.p(0.99))
            out.figure(f"{kind.name}.max_ms", ms(max(result.latencies)) if result.latencies else math.nan)
            if result.app_ms:
                out.figure(f"{kind.name}.app_p50_ms", percentile(result.app_ms, 0.50))
                out.figure(f"{kind.name}.app_p99_ms", percentile(result.app_ms, 0.99))
            out.figure(f"{kind.name}.errors", errors)
            for reason, count in sorted(result.errors.items()):
                out.figure(f"{kind.name}.errors.{reason}", count)
            out.figure(f"{kind.name}.stopped_by_time_limit", result.stopped_by_time)
            if kind.full_page:
                ok = result.p(0.99) <= GOAL_P99_MS and errors == 0 and bool(result.latencies)
                out.figure(f"{kind.name}.goal_p99", goal(ok))
            elif errors:
                out.figure(f"{kind.name}.goal_no_errors", goal(False))
    out.figure("goal_p99_ms", GOAL_P99_MS)
    out.note(
        f"closed loop: mean latency ~ clients / throughput, so p99 <= {GOAL_P99_MS:.0f} ms with {args.concurrency} "
        f"clients needs >= {1e3 * args.concurrency / GOAL_P99_MS:.0f} pages/s (compare healthz.requests_per_s)"
    )
    if bench.backend == "sqlite":
        out.note("the p99 goal is stated for PostgreSQL; on SQLite it is for information")
    if target.table_rows < 1_000_000:
        out.note(f"the table held {target.table_rows:_} rows, not the 1,000,000 of the goal")


def wrk_phase(
    server: LiveServer, kind: PageKind, cookies: Sequence[str], args: argparse.Namespace, out: Reporter
) -> None:
    """The same page under wrk (C, a few microseconds per request), so the load generator does not share the
    cores with the server; wrk checks status codes only (the httpx phases check each page's content)."""
    htmx = {"HX-Request": "true"} if kind.htmx else {}
    calls = [(kind.path, {"Cookie": browser_cookies(server, kind.path, cookie), **htmx}) for cookie in cookies]
    _wrk.run_wrk(server.base_url, server.host, calls, connections=args.concurrency, seconds=2)  # warm-up
    result = _wrk.run_wrk(server.base_url, server.host, calls, connections=args.concurrency, seconds=args.wrk_seconds)
    prefix = f"{kind.name}.wrk"
    out.figure(f"{prefix}_requests_per_s", result.per_second)
    out.figure(f"{prefix}_p50_ms", result.p50_ms)
    out.figure(f"{prefix}_p99_ms", result.p99_ms)
    out.figure(f"{prefix}_errors", result.errors)
    out.figure(f"{prefix}_loadgen_cpu_ms_per_request", result.cpu_seconds * 1e3 / max(1, result.requests))
    out.figure(f"{prefix}_goal_p99", goal(result.p99_ms <= GOAL_P99_MS and result.errors == 0))


def browser_cookies(server: LiveServer, path: str, session_cookie: str) -> str:
    """The Cookie header of a signed-in browser: the session's and the CSRF cookie that its first page set
    (without it, every answer would make and set a new CSRF token)."""
    session = f"{COOKIE_NAME}={session_cookie}"
    response = httpx.get(f"{server.base_url}{path}", headers={"host": server.host, "cookie": session})
    csrf = next(
        value.split(";", 1)[0]
        for value in response.headers.get_list("set-cookie")
        if value.startswith(f"{CSRF_COOKIE}=")
    )
    return f"{session}; {csrf}"


# ----------------------------------------------------------------------------- 3. profile


@dataclass
class FakeRequest:
    """What the access page handler and its templates read from a request."""

    user: Principal
    scope: dict[str, Any]
    headers: dict[str, str]
    query_params: dict[str, str]
    app: Any  # what request.app.template_engine is read from


def bench_profile(bench: Bench, target: Target, out: Reporter) -> None:
    # One event loop for every call, with the hot-read pool open on it, as in a web process.
    with event_loop_runner() as runner:
        runner.run(bench.portal.hot.open())
        try:
            profile_on(runner.run, bench, target, out)
        finally:
            runner.run(bench.portal.hot.close())


def profile_on(on_loop: Callable[[Coroutine[Any, Any, Any]], Any], bench: Bench, target: Target, out: Reporter) -> None:
    from portal.app import _template_engine

    portal, access = bench.portal, bench.portal.access
    pid = target.patient_id
    with portal.db.write() as session:
        cookie = portal.sessions.create(session, kind="patient", subject_id=target.account_id)
    web_session = portal.sessions.load(cookie)
    principal = Principal("patient", target.account_id, frozenset(), "bench", patient_id=pid)
    engine = _template_engine(bench.settings)
    app = SimpleNamespace(template_engine=engine)
    handler: Any = access_page.fn

    def request_for(params: dict[str, str]) -> FakeRequest:
        return FakeRequest(principal, {"user": principal, "auth": web_session}, {}, params, app)

    def render(template: Any, request: FakeRequest) -> str:
        page = engine.get_template(template.template_name)
        return str(page.render(**template.context, request=request, csrf_token=lambda: "bench"))

    def page(params: dict[str, str]) -> str:
        request = request_for(params)
        return render(on_loop(handler(request=request, portal=portal, page=1)), request)

    html = page({})
    if f"{target.events} accesses match" not in html:
        raise RuntimeError("the in-process page does not show the expected total")
    out.figure("page_html_kib", len(html.encode()) / 1024)
    profiler = cProfile.Profile()
    profiler.runcall(page, {})
    out.note("cProfile of one GET /access (first page) in process: route function + template, by own time:")
    out.note(pstats_table(profiler, "tottime", 20))
    out.note("... and by cumulative time:")
    out.note(pstats_table(profiler, "cumulative", 32))
    with count_statements(portal.db.engine) as counts, count_statements(portal.keystore_db.engine) as keystore:
        page({})
    out.figure("page_statements", counts["statements"])
    out.figure("page_pool_checkouts", counts["checkouts"])
    out.figure("page_keystore_statements", keystore["statements"])

    # The parts of the page, one by one (medians of 5 runs): wall time, and this process's CPU time for the
    # whole pages (on SQLite that includes the database's work; a PostgreSQL server's is not in it).
    flt = TimelineFilter()
    mine = select(AccessEvent).where(AccessEvent.patient_id == pid)

    def on_connection(query: Callable[[Connection], object]) -> Callable[[], object]:
        def run() -> object:
            with portal.db.lone_read() as conn:
                return query(conn)

        return run

    def page_rows(conn: Connection) -> list[Row[Any]]:
        ordered = mine.order_by(AccessEvent.occurred_at.desc(), AccessEvent.id).limit(25)
        return list(conn.execute(ordered).all())

    rows = on_connection(page_rows)()
    assert isinstance(rows, list)

    def entries() -> None:
        for row in rows:
            access.entry(row)

    def decrypt() -> None:
        for row in rows:
            access.open(row.patient_id, "access_events", row.id, row.key_version, row.body)

    overview = on_loop(access.overview(pid, flt)).summary
    request = request_for({})
    htmx_request = FakeRequest(principal, {"user": principal, "auth": web_session}, {"hx-request": "true"}, {}, app)
    template = on_loop(handler(request=request, portal=portal, page=1))
    pages: list[tuple[str, Callable[[], object]]] = [
        ("whole_page", lambda: page({})),
        ("whole_page_emergency", lambda: page({"emergency": "1"})),
        ("whole_page_organisation", lambda: page({"organisation": FILTER_ORGANISATION})),
        ("whole_page_action", lambda: page({"action": "update"})),
        ("htmx_partial", lambda: on_loop(handler(request=htmx_request, portal=portal, page=2))),
    ]
    parts: list[tuple[str, Callable[[], object]]] = [
        *pages,
        ("route_function", lambda: on_loop(handler(request=request, portal=portal, page=1))),
        ("session_and_patient_read", lambda: on_loop(portal.sessions.load_with_patient(cookie, touch=False))),
        ("overview", lambda: on_loop(access.overview(pid, flt))),
        ("timeline_page_and_count", lambda: on_loop(access.timeline(pid, flt, page=1))),
        ("page_rows_query", on_connection(page_rows)),
        ("page_entries_25", entries),
        ("weekly_counts_query", on_connection(lambda conn: access._weekly_counts(conn, pid, flt))),
        ("organisation_names", on_connection(lambda conn: access._names(conn, pid))),
        ("weekly_chart_svg", lambda: weekly_chart(overview.weeks, overview.series)),
        ("render_template", lambda: render(template, request)),
    ]
    timings: dict[str, float] = {}
    for name, fn in parts:
        timings[name] = median_of(5, fn)
        out.figure(f"part.{name}_ms", ms(timings[name]))
    for name, fn in pages:
        out.figure(f"cpu.{name}_ms", ms(median_cpu_of(5, fn)))
    out.figure("per_row_entry_us", 1e6 * timings["page_entries_25"] / len(rows))
    out.figure("per_row_decrypt_us", 1e6 * median_of(5, decrypt) / len(rows))
    out.figure("chart_weeks", len(overview.weeks))
    out.figure("chart_organisations", len(overview.series))
    # The downloads (CSV, NDJSON) and the accounting decrypt every access: timed on one organisation's.
    subset = TimelineFilter(organisation=FILTER_ORGANISATION)
    all_s, found = timed(lambda: access.all_entries(pid, subset))
    per_row = all_s / max(1, len(found))
    out.figure("downloads.all_entries_rows", len(found))
    out.figure("downloads.all_entries_per_row_us", 1e6 * per_row)
    out.figure("downloads.all_entries_estimate_all_rows_ms", ms(per_row * target.events))

    # The same page with its summary (chart, total, organisations) recomputed: what the first view after a
    # change to the patient's accesses costs, and every view did before the summary was cached.
    def uncached_page() -> str:
        access._summaries.clear()
        return page({})

    uncached = median_of(5, uncached_page)
    out.figure("part.whole_page_summary_recomputed_ms", ms(uncached))
    out.figure("whole_page_speedup_from_the_summary_cache", uncached / timings["whole_page"])


# ----------------------------------------------------------------------------- main


def code_version() -> str:
    """The commit measured, and whether the working tree differs from it (other work may be in progress)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "portal", "templates"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"commit {commit}" + (" + uncommitted changes in portal/ or templates/" if dirty else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead of a throwaway PostgreSQL")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-timeline", action="store_true", help="skip the fill, the load and the profile")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--batches", type=int, default=50, help="at most this many measured ingest rounds")
    parser.add_argument(
        "--ingest-time-limit", type=float, default=75.0, help="no new ingest round after this many seconds"
    )
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--ingest-patients", type=int, default=200)
    parser.add_argument(
        "--ingest-senders", type=int, default=2, help="integrations posting at once in the concurrent phase (1: none)"
    )
    parser.add_argument("--patient-events", type=int, default=10_000)
    parser.add_argument("--table-events", type=int, default=1_000_000, help="rows in access_events for the load")
    parser.add_argument("--other-patients", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=2_000, help="at most this many requests per load phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--web-processes",
        type=int,
        default=1,
        help="uvicorn worker processes for the timeline and the concurrent ingest",
    )
    parser.add_argument(
        "--wrk-seconds", type=float, default=20.0, help="length of the wrk phase (0: none; needs the wrk package)"
    )
    parser.add_argument("--phase-time-limit", type=float, default=20.0, help="seconds of sending per load phase")
    parser.add_argument("--seed", type=int, default=20_261_006)
    args = parser.parse_args(argv)
    if min(args.batches, args.batch_size, args.patient_events, args.other_patients, args.concurrency) < 1:
        parser.error("sizes and counts must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    wall = time.perf_counter()
    ingest_out, timeline_out, profile_out = Reporter("ingest"), Reporter("timeline"), Reporter("profile")
    ingest_out.header(
        "access log benchmark",
        machine=machine(),
        server="uvicorn, 1 process, loopback; load generator and in-process work in this process (same cores)",
        code=code_version(),
    )
    with bench_setup(sqlite=args.sqlite) as bench:
        ingest_out.figure("backend", bench.backend)
        ingest_out.figure("database", server_version(bench.portal))
        if isinstance(bench.pg, LocalPostgres):
            ingest_out.note("PostgreSQL: throwaway cluster with fsync=off, synchronous_commit=off (flatters commits)")
        if not args.skip_ingest:
            bench_ingest(bench, args, rng, ingest_out)
        if not args.skip_timeline:
            target = fill(bench, args, rng, timeline_out)
            bench_timeline(bench, target, args, timeline_out)
            if not args.skip_profile:
                bench_profile(bench, target, profile_out)
    ingest_out.figure("wall_s", time.perf_counter() - wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
