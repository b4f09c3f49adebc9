"""Benchmark of export and erasure requests, issue #7 (a script, not a pytest test).

    .venv/bin/python -m tests.bench.bench_requests [--pg] [--export-runs N] [--erasure-runs N]
        [--click-runs N] [--profile auto|always|never] [--skip-click] [--skip-export] [--skip-erasure]

Goals (from the issue): export of a large patient (>= 5,000 resources, >= 20,000 access events)
within 30 s and 500 MB of peak memory; erasure with verification of that patient within 2 s; and
the time from the patient's click to "export ready" on the auto-approved path in embedded mode.

What it does, in one run (SQLite files by default; a throwaway PostgreSQL with ``--pg``):

1. click: the real app under uvicorn (embedded mode: in-process Dramatiq worker, memory broker)
   with the ``auto_approve_exports`` policy on; a "typical" synthetic patient enrolled over HTTP
   with the software passkey. Each run steps up (not timed), then times POST /requests/export
   until GET /requests/{id}/status says "Your export is ready" (polled every 50 ms; the page
   itself polls every 2 s). The request's own timeline splits it into queueing and building;
2. export: a large patient (``generate_patient_bundle(size="large", today=2009-06-01)``, plus
   ``--events`` BALP AuditEvents ingested through ``portal.access.ingest``), exported
   ``--export-runs`` times in this process by ``ExportBuilder.build`` exactly as the worker
   calls it, with each part timed (the progress marks, plus wrappers around the bundle JSON,
   the CSV writer, the PDF context, template and WeasyPrint). The summary's HTML is then turned
   into a PDF by the portal's ``PdfRenderer.html_to_pdf`` (tagged PDF/UA-1) and by bare
   WeasyPrint, alternately, in the same run. Then the whole ``run_export`` of an auto-approved
   request runs once in a fresh worker process (this module with ``--child-export``): its wall
   time and the process's peak RSS, overall and per part, are the figures for the goals;
3. erasure: ``--erasure-runs`` erasure requests (each a fresh large patient; the first is the
   exported one), submitted through ``RequestService.submit_erasure`` with a stepped-up session
   and approved by two officers (sessions and step-up evidence written directly, no HTTP), with
   ``erasure_waiting_days=0``; the data is old (2009), so the medical and access-log categories
   are past retention and really erased. ``run_erasure`` is timed whole and by part (plan, key
   destruction + row deletion, verification, certificate).

A part over its goal is profiled (cProfile, ``--profile auto``). Prints ``requests.<backend>.*``
figures, ``# ...`` context lines and ``goal_*=PASS|MISS`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from weasyprint import HTML

import portal.dsar.export as export_module
from portal.accounts.models import Account, StepUpEvidence
from portal.container import Portal, build_portal
from portal.db import utcnow
from portal.dsar.export import Scope
from portal.dsar.models import DataRequest, ExportArchive, RequestEvent
from portal.dsar.service import AUTO_APPROVE_EXPORTS
from portal.logging import configure_logging
from portal.pdf import STATIC_SCHEME, PdfRenderer, StaticOnlyFetcher
from portal.records.models import Resource
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from portal.security.sessions import SubjectKind, WebSession
from portal.settings import Settings
from tests.bench._common import (
    BenchPortal,
    Reporter,
    bench_portal,
    free_port,
    goal,
    lifetime_peak_rss_mib,
    machine,
    median,
    peak_rss_mib,
    profile,
    reset_peak_rss,
    rss_mib,
    server_version,
    timed,
)
from tests.bench._server import live_server, server_env
from tests.bench.bench_access import code_version, random_spec
from tests.conftest import csrf_token
from tests.support.accounts import confirm_birth_date, register, step_up, token_of
from tests.support.authenticator import SoftwareAuthenticator

ACTOR = "system:bench"
SENDER = "integration:bench-ehr"
OLD_TODAY = date(2009, 6, 1)  # long past every retention period, so an erasure erases the medical data
CLICK_TODAY = date(2026, 11, 1)
HISTORY = timedelta(days=2 * 365)  # the access events spread over the two years before "today"
INGEST_BATCH = 5_000

GOAL_EXPORT_S = 30.0
GOAL_EXPORT_MB = 500.0  # MB (10^6 bytes), as the issue says
GOAL_EXPORT_MIB = GOAL_EXPORT_MB * 1e6 / 2**20
GOAL_ERASURE_S = 2.0

POLL_S = 0.05
CLICK_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = 600.0

# The export's parts, as its progress marks divide it (percent -> the part that starts there).
PHASES = {
    10: "read_records_decrypt",
    35: "consents_access_events",
    55: "bundle_json_and_csv",
    70: "pdf",
    90: "zip_sign",
}


# ----------------------------------------------------------------------------- patients and people


@dataclasses.dataclass(frozen=True)
class Made:
    patient_id: str
    mrn: str
    birth_date: str
    resources: int
    events: int


def make_patient(
    portal: Portal, seed: int, *, size: str, today: date, events: int, rng: random.Random
) -> tuple[Made, float, float]:
    """Import a synthetic patient and ingest ``events`` BALP AuditEvents about them (dated the
    two years before ``today``); returns it and the seconds of the import and of the ingest."""
    bundle = generate_patient_bundle(seed, size=size, today=today)
    import_s, result = timed(lambda: portal.records.import_bundle(bundle, actor=ACTOR))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    mrn = str(next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM))
    end = datetime(today.year, today.month, today.day, tzinfo=UTC)
    span = HISTORY.total_seconds()
    ingest_s = 0.0
    for first in range(0, events, INGEST_BATCH):
        batch = [
            random_spec(rng, f"p{seed}-{n}", mrn, end - timedelta(seconds=rng.uniform(60, span))).resource()
            for n in range(first, min(events, first + INGEST_BATCH))
        ]
        start = time.perf_counter()
        found = portal.access.ingest(batch, sender=SENDER)
        ingest_s += time.perf_counter() - start
        if found.count("accepted") != len(batch):
            raise RuntimeError(f"ingest accepted {found.count('accepted')} of {len(batch)}")
    made = Made(result.patient_id, mrn, str(patient["birthDate"]), len(bundle["entry"]), events)
    return made, import_s, ingest_s


def add_account(portal: Portal, *, kind: SubjectKind, patient_id: str | None = None, name: str = "") -> str:
    account = Account(
        kind=kind,
        patient_id=patient_id,
        email=f"{name}@bench.example" if name else None,
        display_name=name or None,
        roles="privacy_officer" if kind == "staff" else "",
        status="active",
        user_handle=os.urandom(32),
    )
    with portal.db.write() as session:
        session.add(account)
        session.flush()
        return account.id


def stepped_up(portal: Portal, account_id: str, kind: SubjectKind) -> WebSession:
    """A session that just stepped up, and its evidence row: what a passkey step-up leaves behind."""
    with portal.db.write() as session:
        token = portal.sessions.create(session, kind=kind, subject_id=account_id)
    with portal.db.write() as session:
        token = portal.sessions.rotate(session, token, stepped_up=True)
        session.add(
            StepUpEvidence(
                account_id=account_id,
                credential_id="bench-credential",
                ledger_seq=0,
                assertion="{}",
                user_verified=True,
                created_at=utcnow(),
            )
        )
    loaded = portal.sessions.load(token)
    assert loaded is not None
    return loaded


# ----------------------------------------------------------------------------- timing wrappers


@contextlib.contextmanager
def timing(target: object, name: str, spent: dict[str, list[float]], label: str | None = None) -> Iterator[None]:
    """Replace ``target.name`` (a module function or an instance's method) by a wrapper that adds
    each call's seconds to ``spent[label]``; restored on exit."""
    original = getattr(target, name)
    own = name in vars(target)  # a module's function; an instance's method lives on its class
    key = label or name

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key].append(time.perf_counter() - start)

    setattr(target, name, wrapper)
    try:
        yield
    finally:
        if own:
            setattr(target, name, original)
        else:
            delattr(target, name)


class TimedPdf(PdfRenderer):
    """The portal's renderer, timing its template and WeasyPrint apart and keeping the last HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.html = ""
        self.spent: dict[str, float] = {}

    def render(self, template: str, **context: Any) -> bytes:
        started = time.perf_counter()
        self.html = self._env.get_template(template).render(**context)
        templated = time.perf_counter()
        pdf = self.html_to_pdf(self.html)
        self.spent = {"pdf_template": templated - started, "pdf_weasyprint": time.perf_counter() - templated}
        self.pdf_bytes = len(pdf)
        return pdf


class Marks:
    """The progress calls of one export: when each part started; with ``memory``, each part's RSS peak."""

    def __init__(self, *, memory: bool = False) -> None:
        self.at: list[tuple[int, float]] = []
        self.peaks: dict[str, float] = {}
        self.memory = memory

    def __call__(self, percent: int, _note: str = "") -> None:
        now = time.perf_counter()
        if self.memory:
            self.close_part()
            reset_peak_rss()
        self.at.append((percent, now))

    def close_part(self) -> None:
        if self.at:
            self.peaks[PHASES.get(self.at[-1][0], str(self.at[-1][0]))] = peak_rss_mib()

    def parts(self, end: float) -> dict[str, float]:
        ends = [t for _p, t in self.at[1:]] + [end]
        return {PHASES.get(p, str(p)): stop - start for (p, start), stop in zip(self.at, ends, strict=True)}


# ----------------------------------------------------------------------------- 1. click to "export ready"


class LoopbackCookies:
    """A browser's cookie jar for the live server on plain-HTTP loopback: the portal's cookies are
    ``__Host-`` and Secure, which httpx only sends over https, so they are kept and sent here."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def on_request(self, request: httpx.Request) -> None:
        if self.values:
            request.headers["cookie"] = "; ".join(f"{name}={value}" for name, value in self.values.items())

    def on_response(self, response: httpx.Response) -> None:
        for header in response.headers.get_list("set-cookie"):
            pair, _, attributes = header.partition(";")
            name, _, value = pair.strip().partition("=")
            if not value or "max-age=0" in attributes.lower().replace(" ", ""):
                self.values.pop(name, None)
            else:
                self.values[name] = value

    def client(self, base_url: str, host: str) -> httpx.Client:
        return httpx.Client(
            base_url=base_url,
            headers={"host": host},
            timeout=CLICK_TIMEOUT_S,
            event_hooks={"request": [self.on_request], "response": [self.on_response]},
        )


def bench_click(bench: BenchPortal, port: int, args: argparse.Namespace, out: Reporter) -> None:
    portal, settings = bench.portal, bench.settings
    portal.requests.set_policy(AUTO_APPROVE_EXPORTS, True, actor="staff:bench-admin")
    made, _import_s, _ingest_s = make_patient(
        portal, args.seed + 1, size="typical", today=CLICK_TODAY, events=args.click_events, rng=random.Random(args.seed)
    )
    out.figure("click.patient_resources", made.resources)
    out.figure("click.patient_access_events", made.events)
    key = SoftwareAuthenticator(settings.origin)
    totals, posts, queued, building, noticed = [], [], [], [], []
    with (
        live_server(settings, port, settings.data_dir.parent) as server,
        LoopbackCookies().client(server.base_url, server.host) as client,
    ):
        # Enrolment over HTTP, as tests.support.accounts.enrol_patient does (the client ends up signed in).
        token = token_of(portal.accounts.invite_patient(made.mrn, actor="staff:bench"))
        if client.get(f"/enrol/{token}").status_code != 200:
            raise RuntimeError("enrolment link refused")
        confirm_birth_date(client, token, made.birth_date)  # type: ignore[arg-type]
        enrolled = register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", key)  # type: ignore[arg-type]
        if enrolled.status_code != 201:
            raise RuntimeError(f"enrolment: {enrolled.status_code} {enrolled.text[:300]}")
        for run in range(args.click_runs + 1):  # run 0 warms the server up and is not counted
            stepped = step_up(client, key, "export")  # type: ignore[arg-type]
            if stepped.status_code != 201:
                raise RuntimeError(f"step-up: {stepped.status_code} {stepped.text[:300]}")
            csrf = csrf_token(client)  # type: ignore[arg-type]
            clicked = time.perf_counter()
            wall_clicked = datetime.now(UTC)
            response = client.post(
                "/requests/export", data={"_csrf_token": csrf, "scope": "all"}, follow_redirects=False
            )
            posted = time.perf_counter()
            if response.status_code != 303:
                raise RuntimeError(f"POST /requests/export: {response.status_code} {response.text[:300]}")
            request_id = response.headers["location"].rsplit("/", 1)[1]
            while True:
                status = client.get(f"/requests/{request_id}/status")
                if status.status_code == 200 and "Your export is ready" in status.text:
                    break
                if time.perf_counter() - clicked > CLICK_TIMEOUT_S:
                    raise RuntimeError(f"no export ready after {CLICK_TIMEOUT_S:.0f} s: {status.text[:300]}")
                time.sleep(POLL_S)
            ready = time.perf_counter()
            if run == 0:
                continue
            at = request_times(portal, request_id)
            totals.append(ready - clicked)
            posts.append(posted - clicked)
            queued.append((at["start"] - at["submit"]).total_seconds())
            building.append((at["complete"] - at["start"]).total_seconds())
            noticed.append(ready - clicked - (at["complete"] - wall_clicked).total_seconds())
    out.figure("click.runs", len(totals))
    out.figure("click.to_ready_seconds", median(totals))
    out.figure("click.to_ready_min_seconds", min(totals))
    out.figure("click.to_ready_max_seconds", max(totals))
    out.figure("click.post_ms", 1e3 * median(posts))
    out.figure("click.submit_to_start_ms", 1e3 * median(queued))
    out.figure("click.start_to_complete_ms", 1e3 * median(building))
    out.figure("click.complete_to_seen_ms", 1e3 * median(noticed))
    out.note(
        "click: the POST, then the job waiting in the embedded worker (submit->start), the export "
        f"(start->complete), then the {1e3 * POLL_S:.0f} ms polling noticing it; the page polls every 2 s, so a "
        "person sees it up to 2 s later"
    )


def request_times(portal: Portal, request_id: str) -> dict[str, datetime]:
    """When each step of a request's timeline happened (server clock, same machine)."""
    with portal.db.read() as session:
        rows = session.execute(
            select(RequestEvent.action, RequestEvent.at).where(RequestEvent.request_id == request_id)
        ).all()
    return dict(rows)


# ----------------------------------------------------------------------------- 2. export


def export_once(portal: Portal, patient_id: str, run: int) -> dict[str, Any]:
    """One ``ExportBuilder.build`` as the worker calls it, timed by part."""
    renderer = TimedPdf()
    builder = dataclasses.replace(portal.requests.exporter, pdf=renderer)
    spent: dict[str, list[float]] = defaultdict(list)
    marks = Marks()
    gc.collect()
    with (
        timing(export_module, "_json_bytes", spent),
        timing(export_module, "to_csv", spent),
        timing(builder, "summary_context", spent),
    ):
        started = time.perf_counter()
        built = builder.build(f"bench-export-{run}", patient_id, Scope(), marks)
        ended = time.perf_counter()
    parts = marks.parts(ended)
    parts["bundle_json"] = spent["_json_bytes"][0]  # the first call; the last one is the manifest
    parts["csv"] = sum(spent["to_csv"])
    parts["pdf_context"] = sum(spent["summary_context"])
    parts.update(renderer.spent)
    return {
        "seconds": ended - started,
        "parts": parts,
        "built": built,
        "html": renderer.html,
        "pdf_bytes": renderer.pdf_bytes,
    }


def bench_export(bench: BenchPortal, made: Made, args: argparse.Namespace, out: Reporter) -> None:
    portal = bench.portal
    runs = [export_once(portal, made.patient_id, n) for n in range(args.export_runs)]
    last = runs[-1]
    built = last["built"]
    seconds = median([r["seconds"] for r in runs])
    out.figure("export.runs", len(runs))
    out.figure("export.build_seconds", seconds)
    out.figure("export.build_min_seconds", min(r["seconds"] for r in runs))
    out.figure("export.build_max_seconds", max(r["seconds"] for r in runs))
    out.figure("export.zip_mib", len(built.data) / 2**20)
    out.figure("export.uncompressed_mib", sum(built.files.values()) / 2**20)
    out.figure("export.bundle_json_mib", built.files["fhir/bundle.json"] / 2**20)
    out.figure("export.csv_mib", sum(n for name, n in built.files.items() if name.startswith("csv/")) / 2**20)
    out.figure("export.pdf_kib", built.files["summary.pdf"] / 1024)
    out.figure("export.resources", sum(built.counts.values()))
    out.figure("export.audit_events", built.counts.get("AuditEvent", 0))
    names = [*PHASES.values(), "bundle_json", "csv", "pdf_context", "pdf_template", "pdf_weasyprint"]
    for name in names:
        out.figure(f"export.part.{name}_seconds", median([r["parts"].get(name, 0.0) for r in runs]))
    out.note(
        "export.part.*: read_records_decrypt .. zip_sign are the spans between the builder's progress marks "
        "(they add up to the build); bundle_json_and_csv = bundle_json + csv; pdf = pdf_context + pdf_template + "
        "pdf_weasyprint (+ README)"
    )

    # The PDF against bare WeasyPrint on the same HTML, alternating, in this run.
    html = last["html"]
    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # bare: the stylesheet link cannot be fetched
    portal_s, same_css_s, bare_s = [], [], []
    for _ in range(args.export_runs):
        portal_s.append(timed(lambda: PdfRenderer.html_to_pdf(html))[0])
        same_css_s.append(
            timed(lambda: HTML(string=html, base_url=STATIC_SCHEME, url_fetcher=StaticOnlyFetcher()).write_pdf())[0]
        )
        bare_s.append(timed(lambda: HTML(string=html).write_pdf())[0])
    pdf_in_build = median([r["parts"]["pdf"] for r in runs])
    out.figure("export.pdf.html_kib", len(html.encode()) / 1024)
    out.figure("export.pdf.in_build_seconds", pdf_in_build)
    out.figure("export.pdf.share_of_build", pdf_in_build / seconds)
    out.figure("export.pdf.portal_html_to_pdf_seconds", median(portal_s))
    out.figure("export.pdf.bare_weasyprint_same_css_seconds", median(same_css_s))
    out.figure("export.pdf.bare_weasyprint_seconds", median(bare_s))
    out.figure("export.pdf.in_build_vs_bare_same_css", pdf_in_build / median(same_css_s))
    out.figure("export.pdf.portal_vs_bare_same_css", median(portal_s) / median(same_css_s))
    out.note(
        "pdf: portal_html_to_pdf = PdfRenderer.html_to_pdf (PDF/UA-1, the static-only fetcher); "
        "bare_weasyprint_same_css = HTML(string=html, base_url+fetcher for pdf.css).write_pdf(); "
        "bare_weasyprint = HTML(string=html).write_pdf() (its stylesheet link cannot load: unstyled)"
    )

    if args.profile == "always" or (args.profile == "auto" and seconds > GOAL_EXPORT_S):
        _built, table = profile(
            lambda: portal.requests.exporter.build("bench-profile", made.patient_id, Scope(), lambda *_: None), top=18
        )
        out.note("cProfile of one ExportBuilder.build, top functions by own time:")
        out.note(table)


def bench_export_worker(bench: BenchPortal, made: Made, out: Reporter) -> None:
    """The whole run_export of an auto-approved request, in a fresh worker process: time and peak RSS."""
    portal = bench.portal
    portal.requests.set_policy(AUTO_APPROVE_EXPORTS, True, actor="staff:bench-admin")
    account_id = add_account(portal, kind="patient", patient_id=made.patient_id)
    request = portal.requests.submit_export(stepped_up(portal, account_id, "patient"), made.patient_id, Scope())
    if request.status != "approved":
        raise RuntimeError(f"export request is {request.status}, not approved")
    child = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_requests", "--child-export", request.id],
        cwd=Path(__file__).resolve().parents[2],
        env=server_env(bench.settings),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"export worker process failed:\n{child.stderr[-3000:]}")
    found = json.loads(child.stdout.strip().splitlines()[-1])
    with portal.db.read() as session:
        status = session.scalar(select(DataRequest.status).where(DataRequest.id == request.id))
        archive = session.get(ExportArchive, request.id)
    ok = status == "completed" and archive is not None and archive.body is not None
    out.figure("export.worker.completed", ok)
    out.figure("export.worker.run_export_seconds", found["seconds"])
    out.figure("export.worker.rss_before_mib", found["rss_before_mib"])
    out.figure("export.worker.peak_rss_mib", found["peak_rss_mib"])
    out.figure("export.worker.peak_rss_mb", found["peak_rss_mib"] * 2**20 / 1e6)
    for name, peak in found["phase_peaks_mib"].items():
        out.figure(f"export.worker.peak_rss.{name}_mib", peak)
    if archive is not None:
        out.figure("export.worker.archive_mib", archive.size / 2**20)
    out.figure("goal_export_seconds", goal(ok and found["seconds"] <= GOAL_EXPORT_S))
    out.figure("goal_export_peak_rss", goal(ok and found["peak_rss_mib"] <= GOAL_EXPORT_MIB))
    out.note(
        f"export.worker.*: run_export of an auto-approved request in a new process (the portal built, nothing else "
        f"done), as a worker's first job; peak RSS is the process's VmHWM, goal {GOAL_EXPORT_MB:.0f} MB = "
        f"{GOAL_EXPORT_MIB:.0f} MiB; peak_rss.<part> is the process peak within each part"
    )


def child_export(request_id: str) -> int:
    """``--child-export``: a worker process running one export job (settings from PORTAL_*)."""
    settings = Settings.from_env()
    portal = build_portal(settings)
    try:
        service = portal.requests
        original = service._progress
        marks = Marks(memory=True)

        def progress(rid: str, percent: int, note: str) -> None:
            marks(percent, note)
            original(rid, percent, note)

        service._progress = progress  # type: ignore[method-assign,assignment]
        gc.collect()
        before = rss_mib()
        reset_peak_rss()
        seconds, result = timed(lambda: service.run_export(request_id))
        marks.close_part()  # the last part runs on to the archive's encryption and storing
        peaks = {("zip_sign_and_store" if k == "zip_sign" else k): v for k, v in marks.peaks.items()}
        if result.get("skipped"):
            raise RuntimeError(f"run_export skipped request {request_id}")
        found = {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": lifetime_peak_rss_mib()}
        print(json.dumps({**found, "phase_peaks_mib": peaks, "result": result}), flush=True)
    finally:
        portal.close()
    return 0


# ----------------------------------------------------------------------------- 3. erasure


@dataclasses.dataclass
class Officers:
    ids: tuple[str, str]


def approved_erasure(portal: Portal, made: Made, officers: Officers) -> str:
    """An erasure request submitted by the patient and approved by two officers, through the service."""
    account = portal.accounts.account_for_patient(made.patient_id)  # the exported patient has one already
    account_id = account.id if account else add_account(portal, kind="patient", patient_id=made.patient_id)
    request = portal.requests.submit_erasure(stepped_up(portal, account_id, "patient"), made.patient_id)
    for officer in officers.ids:
        portal.requests.approve(request.id, stepped_up(portal, officer, "staff"))
    with portal.db.read() as session:
        status = session.scalar(select(DataRequest.status).where(DataRequest.id == request.id))
    if status != "approved":
        raise RuntimeError(f"erasure request is {status}, not approved")
    return request.id


def erase_once(portal: Portal, made: Made, officers: Officers) -> dict[str, Any]:
    request_id = approved_erasure(portal, made, officers)
    service, eraser = portal.requests, portal.requests.eraser
    spent: dict[str, list[float]] = defaultdict(list)
    with (
        timing(eraser, "plan", spent),
        timing(eraser, "erase_category", spent),
        timing(eraser, "restrict", spent),
        timing(eraser, "verify", spent),
        timing(service, "_purge_exports", spent),
        timing(service, "_finish_erasure", spent),
        timing(eraser.keys, "destroy", spent, "keys_destroy"),
    ):
        seconds, result = timed(lambda: service.run_erasure(request_id))
    view = service.view(request_id)
    erased = [item.category for item in view.plan if item.step == "erase"]
    with portal.db.read() as session:
        left = session.scalar(
            select(func.count())
            .select_from(Resource)
            .where(Resource.patient_id == made.patient_id, Resource.category.in_(erased))
        )
    ok = (
        view.request.status in {"completed", "partially_completed"}
        and {"clinical", "medications", "demographics", "access_log"} <= set(erased)
        and left == 0
        and bool(view.certificate and view.certificate["document"]["verification"]["passed"])
    )
    parts = {name: sum(times) for name, times in spent.items()}
    parts["erase_rows"] = parts.get("erase_category", 0.0) - parts.get("keys_destroy", 0.0)
    return {"seconds": seconds, "parts": parts, "ok": ok, "erased": erased, "result": result}


def bench_erasure(bench: BenchPortal, first: Made, args: argparse.Namespace, out: Reporter, rng: random.Random) -> None:
    portal = bench.portal
    officers = Officers(
        (add_account(portal, kind="staff", name="olivia"), add_account(portal, kind="staff", name="oscar"))
    )
    runs = []
    for run in range(args.erasure_runs):
        made = first if run == 0 else make_large(portal, args.seed + 100 + run, args, rng)[0]
        runs.append(erase_once(portal, made, officers))
    seconds = median([r["seconds"] for r in runs])
    ok = all(r["ok"] for r in runs)
    out.figure("erasure.runs", len(runs))
    out.figure("erasure.erased_and_verified", ok)
    out.figure("erasure.categories_erased", ",".join(sorted(runs[0]["erased"])))
    out.figure("erasure.seconds", seconds)
    out.figure("erasure.min_seconds", min(r["seconds"] for r in runs))
    out.figure("erasure.max_seconds", max(r["seconds"] for r in runs))
    for name in ("plan", "keys_destroy", "erase_rows", "restrict", "_purge_exports", "verify", "_finish_erasure"):
        out.figure(f"erasure.part.{name.lstrip('_')}_seconds", median([r["parts"].get(name, 0.0) for r in runs]))
    out.figure("goal_erasure_seconds", goal(ok and seconds <= GOAL_ERASURE_S))
    out.note(
        "erasure.part.*: plan = Eraser.plan (inventory counts, reading and decrypting the Encounters for the last "
        "treatment date); keys_destroy + erase_rows = Eraser.erase_category per erased category; verify re-counts "
        "every source; finish_erasure signs the certificate and completes the request"
    )
    if args.profile == "always" or (args.profile == "auto" and seconds > GOAL_ERASURE_S):
        made = make_large(portal, args.seed + 999, args, rng)[0]
        request_id = approved_erasure(portal, made, officers)
        _result, table = profile(lambda: portal.requests.run_erasure(request_id), top=18)
        out.note("cProfile of one run_erasure of a fresh large patient, top functions by own time:")
        out.note(table)


def make_large(portal: Portal, seed: int, args: argparse.Namespace, rng: random.Random) -> tuple[Made, float, float]:
    return make_patient(portal, seed, size="large", today=OLD_TODAY, events=args.events, rng=rng)


# ----------------------------------------------------------------------------- main


def run(bench: BenchPortal, port: int, args: argparse.Namespace) -> int:
    portal = bench.portal
    out = Reporter(f"requests.{bench.backend}")
    out.header(
        "export and erasure requests benchmark (issue #7)",
        backend=server_version(portal),
        machine=machine(),
        code=code_version(),
        large_patient=f"generate_patient_bundle(seed, size='large', today={OLD_TODAY}) + {args.events:_} access events",
    )
    started = time.perf_counter()
    portal.consent.ensure_defaults()
    rng = random.Random(args.seed)
    if not args.skip_click:
        bench_click(bench, port, args, out)
    made = None
    if not (args.skip_export and args.skip_erasure):
        made, import_s, ingest_s = make_large(portal, args.seed, args, rng)
        out.figure("large.resources", made.resources)
        out.figure("large.access_events", made.events)
        out.figure("large.import_seconds", import_s)
        out.figure("large.ingest_seconds", ingest_s)
    if made is not None and not args.skip_export:
        bench_export(bench, made, args, out)
        bench_export_worker(bench, made, out)
    if made is not None and not args.skip_erasure:
        bench_erasure(bench, made, args, out, rng)
    out.figure("peak_rss_mib", lifetime_peak_rss_mib())
    out.figure("total_seconds", time.perf_counter() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_requests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pg", action="store_true", help="run on a throwaway PostgreSQL (or $PORTAL_TEST_PG_URL)")
    parser.add_argument("--seed", type=int, default=20261107)
    parser.add_argument("--events", type=int, default=20_000, help="access events of each large patient")
    parser.add_argument("--export-runs", type=int, default=3, help="in-process exports (the median is reported)")
    parser.add_argument("--erasure-runs", type=int, default=3, help="erasures, each of a fresh large patient")
    parser.add_argument("--click-runs", type=int, default=5, help="clicks to 'export ready' (after one warm-up)")
    parser.add_argument("--click-events", type=int, default=200, help="access events of the click's patient")
    parser.add_argument("--skip-click", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-erasure", action="store_true")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile the export / erasure: auto = only when over its goal",
    )
    parser.add_argument("--child-export", metavar="REQUEST_ID", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging("WARNING", json=False)  # e.g. no "job.unsent" lines: no worker runs in this process
    if args.child_export:
        return child_export(args.child_export)
    if min(args.export_runs, args.erasure_runs, args.click_runs, args.events) < 1:
        parser.error("runs and --events must be at least 1")
    port = free_port()
    with bench_portal(pg=args.pg, origin=f"http://localhost:{port}", erasure_waiting_days=0) as bench:
        return run(bench, port, args)


if __name__ == "__main__":
    raise SystemExit(main())
