"""Export and erasure jobs survive crashes: re-runs change nothing, and a worker killed with SIGKILL
mid-job leaves nothing half-done visible to the patient; a restarted worker finishes it exactly once.

The process tests run the real commands: ``portal worker`` on Redis with PostgreSQL (scaled mode),
and ``portal run`` with its in-process workers on SQLite (embedded mode). Nothing in the portal is
test-aware: an export is slowed by a large synthetic record, and an erasure is held at a known
point by this test taking a lock in the key store, which the worker waits on like on any other
writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from portal import migrate
from portal.app import create_app
from portal.container import Portal, build_portal
from portal.dsar.erasure import Eraser, Step
from portal.dsar.export import ExportBuilder
from portal.dsar.models import DataRequest, DeletionCertificate, ExportArchive, RequestEvent
from portal.dsar.service import ERASURE_JOB, EXPORT_JOB
from portal.dsar.signed import verify_bytes, verify_document
from portal.jobs.models import Job, JobStatus
from portal.records.models import PatientIdentifier, Resource
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from portal.security.sessions import COOKIE_NAME, WebSession
from portal.settings import Settings
from tests.conftest import ORIGIN, make_settings
from tests.support.accounts import enrol_staff, post_form, register, step_up, token_of
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.servers import PostgresServer, RedisServer

Client = TestClient[Litestar]

# A job's lease; Dramatiq's time limit is 5 s shorter, and must leave room for a cold process
# (imports, the first WeasyPrint render) to build a large export.
LEASE_SECONDS = 12
FAST = {
    "PORTAL_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
    "PORTAL_WATCHDOG_INTERVAL_SECONDS": "0.3",
    "PORTAL_JOB_RESEND_AFTER_SECONDS": "0.5",
    "PORTAL_ERASURE_WAITING_DAYS": "0",
    "PORTAL_WORKER_THREADS": "2",
}
# Last treatment long ago: every medical category is past its retention and is erased.
LONG_AGO = date(2009, 6, 1)
RECENTLY = date(2026, 11, 1)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> Settings:
    return make_settings(tmp_path, request, backend, erasure_waiting_days=0)


# ---------------------------------------------------------------------- people and requests


class Flow:
    """A patient and privacy officers driving requests over HTTP.

    The clients are never entered as context managers, so the app's lifespan (the embedded
    worker) never starts in this process: jobs run only where the test says.
    """

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.app = create_app(portal.settings, portal)
        self.patient = TestClient(self.app, base_url=ORIGIN)
        self.patient_key = SoftwareAuthenticator(ORIGIN)
        self.patient_id = ""
        self.officers: dict[str, tuple[Client, SoftwareAuthenticator]] = {}

    def enrol_patient(self, *, seed: int, size: str | int, today: date) -> str:
        bundle = generate_patient_bundle(seed, size=size, today=today)
        self.portal.records.import_bundle(bundle, actor="system:test")
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
        token = token_of(self.portal.accounts.invite_patient(mrn, actor="staff:test"))
        year, month, day = patient["birthDate"].split("-")
        assert self.patient.get(f"/enrol/{token}").status_code == 200
        post_form(self.patient, f"/enrol/{token}/birth-date", {"day": day, "month": month, "year": year})
        finished = register(self.patient, f"/enrol/{token}/options", f"/enrol/{token}/finish", self.patient_key)
        assert finished.status_code == 201, finished.text
        with self.portal.db.read() as session:
            self.patient_id = str(session.scalars(select(PatientIdentifier.patient_id).distinct()).one())
        return self.patient_id

    def submit(self, kind: str) -> str:
        assert step_up(self.patient, self.patient_key, kind).status_code == 201
        fields = {"scope": "all"} if kind == "export" else {"understood": "yes"}
        response = post_form(self.patient, f"/requests/{kind}", fields)
        assert response.status_code == 303, response.text
        return str(response.headers["location"].rsplit("/", 1)[1])

    def approve(self, name: str, request_id: str) -> None:
        if name not in self.officers:
            client = TestClient(self.app, base_url=ORIGIN)
            key = SoftwareAuthenticator(ORIGIN)
            enrolled = enrol_staff(client, self.portal, key, email=f"{name}@example.org")
            assert enrolled.status_code == 201, enrolled.text
            self.officers[name] = (client, key)
        client, key = self.officers[name]
        assert step_up(client, key).status_code == 201
        response = post_form(client, f"/staff/requests/{request_id}/approve")
        assert response.status_code == 303, response.text

    def patient_status(self, request_id: str) -> str:
        response = self.patient.get(f"/requests/{request_id}/status")
        assert response.status_code == 200
        return str(response.text)

    def patient_session(self) -> WebSession:
        """The patient's web session after a fresh step-up (what a download needs)."""
        assert step_up(self.patient, self.patient_key, "download").status_code == 201
        loaded = self.portal.sessions.load(self.patient.cookies.get(COOKIE_NAME, domain="portal.test") or "")
        assert loaded is not None
        return loaded


def _request(portal: Portal, request_id: str) -> DataRequest:
    with portal.db.read() as session:
        request = session.get(DataRequest, request_id)
        assert request is not None
        return request


def _job(portal: Portal, kind: str, request_id: str) -> Job:
    with portal.db.read() as session:
        return session.scalars(select(Job).where(Job.idempotency_key == f"{kind}:{request_id}:")).one()


def _events(portal: Portal, request_id: str) -> list[str]:
    with portal.db.read() as session:
        return list(
            session.scalars(
                select(RequestEvent.action).where(RequestEvent.request_id == request_id).order_by(RequestEvent.at)
            )
        )


def _count(portal: Portal, model: Any, *where: Any) -> int:
    with portal.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _resources(portal: Portal, patient_id: str, category: str) -> int:
    return _count(portal, Resource, Resource.patient_id == patient_id, Resource.category == category)


def _erase_plan(portal: Portal, request_id: str) -> dict[str, int]:
    """Category -> rows held when the erasure started, for the categories it erases."""
    plan = portal.requests.view(request_id).plan
    return {item.category: item.held for item in plan if item.step is Step.erase}


def _wait(what: str, check: Callable[[], bool], timeout: float, *, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _assert_export_verifies(portal: Portal, flow: Flow, request_id: str) -> dict[str, bytes]:
    data, _name = portal.requests.download_export(flow.patient_session(), flow.patient_id, request_id)
    with portal.db.read() as session:
        archive = session.get(ExportArchive, request_id)
        assert archive is not None
        assert hashlib.sha256(data).hexdigest() == archive.sha256
    files = {
        name: zipfile.ZipFile(io.BytesIO(data)).read(name) for name in zipfile.ZipFile(io.BytesIO(data)).namelist()
    }
    public = load_pem_public_key(files["public-key.pem"])
    assert isinstance(public, Ed25519PublicKey)
    assert public.public_bytes_raw() == portal.keys.signing_key().public_key().public_bytes_raw()
    verify_bytes(files["manifest.json.jws"].decode(), files["manifest.json"], public)
    manifest = json.loads(files["manifest.json"])
    assert set(manifest["files"]) == set(files) - {"manifest.json", "manifest.json.jws"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"], name
    assert manifest["request"] == request_id
    return files


def _assert_certificate(portal: Portal, flow: Flow, request_id: str, plan: dict[str, int]) -> dict[str, Any]:
    signed = portal.requests.certificate(request_id, patient_id=flow.patient_id)
    document = verify_document(signed, portal.keys.signing_key().public_key())
    assert document["verification"]["passed"] is True
    assert all(check["ok"] for check in document["verification"]["checks"])
    assert {entry["category"] for entry in document["erased"]} == set(plan)
    # The certificate states every row that was erased, also those erased before an interruption.
    assert {entry["category"]: entry["rows"] for entry in document["erased"]} == plan
    live = portal.keys.categories_with_keys(flow.patient_id)  # from the key store, not this process's cache
    for category in plan:
        assert _resources(portal, flow.patient_id, category) == 0, category
        assert not live.get(category, False), f"the {category} key survived"
    assert _count(portal, PatientIdentifier, PatientIdentifier.patient_id == flow.patient_id) == 0
    return document


# ---------------------------------------------------------------------- in-process re-runs


@pytest.fixture
def flow(portal: Portal) -> Flow:
    return Flow(portal)


def test_running_an_export_twice_changes_nothing(portal: Portal, flow: Flow) -> None:
    flow.enrol_patient(seed=404, size="small", today=RECENTLY)
    request_id = flow.submit("export")
    flow.approve("olivia", request_id)
    job = _job(portal, EXPORT_JOB, request_id)
    assert portal.jobs.run(job.id) is True
    done = _request(portal, request_id)
    assert done.status == "completed"
    events = _events(portal, request_id)
    with portal.db.read() as session:
        archive = session.get(ExportArchive, request_id)
        assert archive is not None
        first = (archive.sha256, archive.created_at, archive.key_version)

    assert portal.requests.run_export(request_id) == {"skipped": True}
    assert portal.jobs.run(job.id) is False, "a duplicate message finds the job done"
    assert _events(portal, request_id) == events
    assert events.count("complete") == 1 and events.count("start") == 1
    with portal.db.read() as session:
        archive = session.get(ExportArchive, request_id)
        assert archive is not None and (archive.sha256, archive.created_at, archive.key_version) == first
    assert _request(portal, request_id).completed_at == done.completed_at
    _assert_export_verifies(portal, flow, request_id)


def test_an_export_that_fails_midway_shows_nothing_and_the_retry_finishes_once(
    portal: Portal, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow.enrol_patient(seed=405, size="small", today=RECENTLY)
    request_id = flow.submit("export")
    flow.approve("olivia", request_id)
    real_build = ExportBuilder.build

    def crash_after_progress(self: ExportBuilder, request_id: str, patient_id: str, scope: Any, progress: Any) -> Any:
        progress(55, "Writing spreadsheets")
        raise OSError("disk full")

    monkeypatch.setattr(ExportBuilder, "build", crash_after_progress)
    with pytest.raises(OSError, match="disk full"):
        portal.requests.run_export(request_id)
    stuck = _request(portal, request_id)
    assert (stuck.status, stuck.progress, stuck.outcome, stuck.completed_at) == ("processing", 55, None, None)
    assert _count(portal, ExportArchive, ExportArchive.request_id == request_id) == 0
    status = flow.patient_status(request_id)
    assert "Being carried out" in status and "Your export is ready" not in status

    monkeypatch.setattr(ExportBuilder, "build", real_build)
    assert portal.requests.run_export(request_id)["bytes"] > 0
    assert portal.requests.run_export(request_id) == {"skipped": True}
    events = _events(portal, request_id)
    assert events.count("start") == 1 and events.count("complete") == 1
    assert _count(portal, ExportArchive, ExportArchive.request_id == request_id) == 1
    assert "Your export is ready" in flow.patient_status(request_id)
    _assert_export_verifies(portal, flow, request_id)


def test_running_an_erasure_again_after_it_completed_changes_nothing(portal: Portal, flow: Flow) -> None:
    patient_id = flow.enrol_patient(seed=406, size="small", today=LONG_AGO)
    request_id = flow.submit("erasure")
    flow.approve("olivia", request_id)
    flow.approve("oscar", request_id)
    job = _job(portal, ERASURE_JOB, request_id)
    assert portal.jobs.run(job.id) is True
    plan = _erase_plan(portal, request_id)
    assert {"demographics", "clinical"} <= set(plan)
    document = _assert_certificate(portal, flow, request_id, plan)
    events = _events(portal, request_id)
    erasures = portal.keys.erasures()
    ledger = portal.ledger.entries_for_subject(patient_id, limit=10_000)

    assert portal.requests.run_erasure(request_id) == {"skipped": True}
    assert portal.jobs.run(job.id) is False
    assert _events(portal, request_id) == events
    assert sum(1 for e in events if e.startswith("complete")) == 1
    assert _count(portal, DeletionCertificate, DeletionCertificate.request_id == request_id) == 1
    assert portal.requests.certificate(request_id, patient_id=patient_id)["document"] == document
    assert len(portal.keys.erasures()) == len(erasures)
    assert len(portal.ledger.entries_for_subject(patient_id, limit=10_000)) == len(ledger)


def test_an_erasure_interrupted_before_its_certificate_resumes_and_certifies_once(
    portal: Portal, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient_id = flow.enrol_patient(seed=407, size="small", today=LONG_AGO)
    request_id = flow.submit("erasure")
    flow.approve("olivia", request_id)
    flow.approve("oscar", request_id)
    real_verify = Eraser.verify
    calls: list[int] = []

    def verify_fails_once(self: Eraser, patient_id: str, categories: list[str]) -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return real_verify(self, patient_id, categories)

    monkeypatch.setattr(Eraser, "verify", verify_fails_once)
    job = _job(portal, ERASURE_JOB, request_id)
    assert portal.jobs.run(job.id) is False, "the first attempt fails and is queued for a retry"
    assert _job(portal, ERASURE_JOB, request_id).status == JobStatus.queued
    stuck = _request(portal, request_id)
    plan = _erase_plan(portal, request_id)
    assert (stuck.status, stuck.outcome, stuck.completed_at) == ("processing", None, None)
    assert _count(portal, DeletionCertificate, DeletionCertificate.request_id == request_id) == 0
    assert all(_resources(portal, patient_id, category) == 0 for category in plan), "the categories were erased"
    status = flow.patient_status(request_id)
    assert "Being carried out" in status and "deletion certificate" not in status
    assert flow.patient.get(f"/requests/{request_id}/certificate/json").status_code in {400, 404}

    assert portal.requests.run_erasure(request_id)["erased"] == sorted(plan)
    assert portal.requests.run_erasure(request_id) == {"skipped": True}
    assert len(calls) == 2
    assert _request(portal, request_id).status in {"completed", "partially_completed"}
    events = _events(portal, request_id)
    assert sum(1 for e in events if e.startswith("complete")) == 1 and events.count("start") == 1
    assert _count(portal, DeletionCertificate, DeletionCertificate.request_id == request_id) == 1
    _assert_certificate(portal, flow, request_id, plan)
    assert sorted(r.category for r in portal.keys.erasures() if r.request_id == request_id) == sorted(plan)


# ---------------------------------------------------------------------- real processes, SIGKILL

REPO = Path(__file__).resolve().parents[2]
PERIODIC_CHECKPOINT = "audit.checkpoint"


class PortalProcess:
    """``portal <command>`` in its own process group, so SIGKILL reaches every process it started
    (``portal worker`` runs Dramatiq's worker processes as its children): like a machine dying."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "portal", *command],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        # The group leader is reaped; wait until none of its children is left either.
        _wait("the killed process group to be gone", lambda: not _group_alive(self.process.pid), 10)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Processes:
    """The processes one test started, killed at the end whatever happens."""

    def __init__(self, env: dict[str, str], command: Callable[[], list[str]], logs: Path) -> None:
        self.env, self.command, self.logs = env, command, logs
        self.started: list[PortalProcess] = []

    def start(self) -> PortalProcess:
        started = PortalProcess(self.command(), self.env, self.logs / f"process-{len(self.started) + 1}.log")
        self.started.append(started)
        return started

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        try:
            _wait(what, check, timeout)
        except AssertionError as exc:
            logs = "\n".join(f"--- {p.log.name} (exit {p.process.poll()})\n{p.tail()}" for p in self.started)
            raise AssertionError(f"{exc}\n{logs}") from None

    def kill_all(self) -> None:
        for started in self.started:
            started.kill()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        FAST,
        PORTAL_DATA_DIR=str(settings.data_dir),
        PORTAL_DATABASE_URL=settings.database_url,
        PORTAL_KEYSTORE_URL=settings.keystore_url,
        PORTAL_BROKER_URL=settings.broker_url,
        # The same origin as this test's portal: the ledger and the exports name it.
        PORTAL_ORIGIN=settings.origin,
        PORTAL_LOG_JSON="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _process_settings(tmp_path: Path, *, database_url: str = "", keystore_url: str = "", broker_url: str) -> Settings:
    data_dir = tmp_path / "var"
    return Settings(
        data_dir=data_dir,
        # Set explicitly, as the processes get them: every process must use the same files.
        database_url=database_url or f"sqlite:///{data_dir / 'portal.sqlite3'}",
        keystore_url=keystore_url or f"sqlite:///{data_dir / 'keystore.sqlite3'}",
        broker_url=broker_url,
        origin=ORIGIN,
        erasure_waiting_days=0,
        job_lease_seconds=LEASE_SECONDS,
    ).complete()


def _scaled_settings(tmp_path: Path, pg: PostgresServer, redis_server: RedisServer, label: str) -> Settings:
    """The scaled mode's settings: a fresh main database and key store on PostgreSQL, and Redis."""
    name = f"{label}_{os.urandom(5).hex()}"
    return _process_settings(
        tmp_path,
        database_url=pg.create_database(name),
        keystore_url=pg.create_database(f"{name}_keys"),
        broker_url=redis_server.url,
    )


@contextlib.contextmanager
def _test_portal(settings: Settings) -> Iterator[Portal]:
    built = build_portal(settings)
    migrate.upgrade_all(settings.database_url, settings.keystore_url)
    built.consent.ensure_defaults()
    if not settings.uses_memory_broker:
        built.connect_broker().flush_all()  # approvals send their job to Redis, as the web process does
    try:
        yield built
    finally:
        built.close()


@contextlib.contextmanager
def _redis_worker(tmp_path: Path, pg: PostgresServer, redis_server: RedisServer) -> Iterator[tuple[Flow, Processes]]:
    settings = _scaled_settings(tmp_path, pg, redis_server, "crash")
    with _test_portal(settings) as portal:
        processes = Processes(_child_env(settings), lambda: ["worker", "--processes", "1", "--threads", "2"], tmp_path)
        try:
            yield Flow(portal), processes
        finally:
            processes.kill_all()


@contextlib.contextmanager
def _embedded(tmp_path: Path) -> Iterator[tuple[Flow, Processes]]:
    settings = _process_settings(tmp_path, broker_url="memory://")
    with _test_portal(settings) as portal:
        processes = Processes(_child_env(settings), lambda: ["run", "--port", str(_free_port())], tmp_path)
        try:
            yield Flow(portal), processes
        finally:
            processes.kill_all()


class Gate(Protocol):
    """A lock in the key store that the erasure worker waits on before destroying a category's key."""

    def erasures(self) -> int: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class SqliteGate:
    """The key store's write lock (BEGIN IMMEDIATE); the worker's next key destruction waits for it."""

    def __init__(self, url: str) -> None:
        database = make_url(url).database
        assert database
        self.connection = sqlite3.connect(database, timeout=0, isolation_level=None)

    def erasures(self) -> int:
        return int(self.connection.execute("SELECT count(*) FROM erasures").fetchone()[0])

    def hold(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.0005)

    def release(self) -> None:
        self.connection.execute("COMMIT")
        # SQLite has no queue of waiters: see the worker get in before taking the lock again.
        before = self.erasures()
        _wait("the worker to destroy the next key", lambda: self.erasures() > before, 9, interval=0.0005)

    def close(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
        self.connection.close()


class PostgresGate:
    """An EXCLUSIVE lock on the data keys table: reads go on, destroying a key waits. PostgreSQL
    grants a released lock to the waiting worker first, so taking it again lets exactly one through."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self.connection = psycopg.connect(parsed.render_as_string(hide_password=False))

    def erasures(self) -> int:
        row = self.connection.execute("SELECT count(*) FROM erasures").fetchone()
        assert row is not None
        return int(row[0])

    def hold(self) -> None:
        self.connection.execute("LOCK TABLE data_keys IN EXCLUSIVE MODE")

    def release(self) -> None:
        self.connection.rollback()

    def close(self) -> None:
        self.connection.rollback()
        self.connection.close()


def _gate(settings: Settings) -> Gate:
    return SqliteGate(settings.keystore_url) if settings.is_sqlite else PostgresGate(settings.keystore_url)


def _wait_until_idle(portal: Portal, processes: Processes) -> None:
    """The new process's first watchdog round queued its periodic jobs and its workers ran them."""

    def idle() -> bool:
        with portal.db.read() as session:
            checkpoint = session.scalar(
                select(Job.status).where(Job.kind == PERIODIC_CHECKPOINT).order_by(Job.created_at.desc()).limit(1)
            )
            running = session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.running))
        return checkpoint == JobStatus.succeeded and not running

    processes.wait("the portal process to start and run its periodic jobs", idle, 30)


def _export_survives_sigkill(flow: Flow, processes: Processes) -> None:
    portal = flow.portal
    flow.enrol_patient(seed=505, size="large", today=RECENTLY)
    request_id = flow.submit("export")
    first = processes.start()
    flow.approve("olivia", request_id)

    def midway() -> bool:
        request = _request(portal, request_id)
        return request.status == "processing" and 55 <= request.progress < 100

    processes.wait("the export to be well under way", midway, 40)
    first.kill()

    # What the patient sees with the worker dead mid-export: it is being carried out, nothing more.
    stuck = _request(portal, request_id)
    assert stuck.status == "processing" and stuck.progress < 100
    assert (stuck.outcome, stuck.completed_at) == (None, None)
    assert _count(portal, ExportArchive, ExportArchive.request_id == request_id) == 0
    status = flow.patient_status(request_id)
    assert "Being carried out" in status and "Your export is ready" not in status
    job = _job(portal, EXPORT_JOB, request_id)
    assert (job.status, job.attempts) == (JobStatus.running, 1)

    processes.start()
    processes.wait("the export to complete", lambda: _request(portal, request_id).status == "completed", 45)
    time.sleep(0.5)  # room for a wrong second completion to show up
    job = _job(portal, EXPORT_JOB, request_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 2)
    events = _events(portal, request_id)
    assert events.count("start") == 1 and events.count("complete") == 1, events
    assert _count(portal, ExportArchive, ExportArchive.patient_id == flow.patient_id) == 1
    assert len(portal.ledger.entries_for_subject(flow.patient_id, actions=["dsar.complete"])) == 1
    assert "Your export is ready" in flow.patient_status(request_id)
    files = _assert_export_verifies(portal, flow, request_id)
    bundle = json.loads(files["fhir/bundle.json"])
    assert len(bundle["entry"]) >= 5_000


def _erasure_survives_sigkill(flow: Flow, processes: Processes) -> None:
    portal = flow.portal
    patient_id = flow.enrol_patient(seed=506, size="typical", today=LONG_AGO)
    request_id = flow.submit("erasure")
    flow.approve("olivia", request_id)
    first = processes.start()
    _wait_until_idle(portal, processes)
    gate = _gate(portal.settings)
    try:
        gate.hold()
        flow.approve("oscar", request_id)
        processes.wait(
            "the erasure to start and save its plan",
            lambda: (r := _request(portal, request_id)).status == "processing" and r.plan is not None,
            20,
        )
        plan = _erase_plan(portal, request_id)
        order = list(plan)
        assert len(order) >= 3 and order[:2] == ["demographics", "clinical"], order
        gate.release()
        gate.hold()
        erased = order[: gate.erasures()]
        assert 1 <= len(erased) < len(order), f"expected the worker held after one category, erased {erased}"
        processes.wait(
            f"the rows of {erased} to be deleted",
            lambda: all(_resources(portal, patient_id, c) == 0 for c in erased),
            10,
        )
        first.kill()
    finally:
        gate.close()

    # The worker died between two categories: what is erased stays erased, but nothing is certified.
    stuck = _request(portal, request_id)
    assert stuck.status == "processing"
    assert (stuck.outcome, stuck.completed_at) == (None, None)
    assert _count(portal, DeletionCertificate, DeletionCertificate.request_id == request_id) == 0
    live = portal.keys.categories_with_keys(patient_id)
    for category in order:
        if category in erased:
            assert not live[category] and _resources(portal, patient_id, category) == 0, category
        else:
            assert live[category] and _resources(portal, patient_id, category) == plan[category], category
    status = flow.patient_status(request_id)
    assert "Being carried out" in status and "deletion certificate" not in status
    assert flow.patient.get(f"/requests/{request_id}/certificate/json").status_code in {400, 404}
    assert (_job(portal, ERASURE_JOB, request_id).status, _job(portal, ERASURE_JOB, request_id).attempts) == (
        JobStatus.running,
        1,
    )

    processes.start()
    processes.wait(
        "the erasure to complete",
        lambda: _request(portal, request_id).status in {"completed", "partially_completed"},
        45,
    )
    time.sleep(0.5)
    job = _job(portal, ERASURE_JOB, request_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 2)
    events = _events(portal, request_id)
    assert sum(1 for e in events if e.startswith("complete")) == 1 and events.count("start") == 1, events
    assert _count(portal, DeletionCertificate, DeletionCertificate.request_id == request_id) == 1
    _assert_certificate(portal, flow, request_id, plan)
    assert sorted(r.category for r in portal.keys.erasures() if r.request_id == request_id) == sorted(plan)
    assert _request(portal, request_id).outcome == {
        "erased": plan,
        "retained": [i.category for i in portal.requests.view(request_id).plan if i.step is Step.retain],
        "verified": True,
    }


@pytest.mark.pg
def test_export_survives_sigkill_of_a_redis_worker(
    tmp_path: Path, pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    with _redis_worker(tmp_path, pg_server, redis_server) as (flow, processes):
        _export_survives_sigkill(flow, processes)


@pytest.mark.pg
def test_erasure_survives_sigkill_of_a_redis_worker(
    tmp_path: Path, pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    with _redis_worker(tmp_path, pg_server, redis_server) as (flow, processes):
        _erasure_survives_sigkill(flow, processes)


def test_export_survives_sigkill_of_the_embedded_portal(tmp_path: Path) -> None:
    with _embedded(tmp_path) as (flow, processes):
        _export_survives_sigkill(flow, processes)


def test_erasure_survives_sigkill_of_the_embedded_portal(tmp_path: Path) -> None:
    with _embedded(tmp_path) as (flow, processes):
        _erasure_survives_sigkill(flow, processes)
