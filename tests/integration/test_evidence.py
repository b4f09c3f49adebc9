"""Evidence packs end to end: a completed erasure, a pack, a regulator, offline verification, tampering."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import cryptography
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select, text, update

from portal.__main__ import cli
from portal.access.service import TimelineFilter
from portal.audit import merkle
from portal.audit.ledger import AuditEvent, LedgerEntry
from portal.container import Portal
from portal.dsar.signed import public_key_pem, sign_bytes
from portal.evidence.models import EvidencePack
from portal.evidence.service import EvidenceError
from portal.evidence.verify_pack import verify_pack
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from portal.settings import Settings
from tests.conftest import ORIGIN, make_settings
from tests.support.accounts import confirm_birth_date, enrol_staff, post_form, register, step_up, token_of
from tests.support.aio import run_async
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.pdf import is_tagged_pdf_ua

Client = TestClient[Litestar]
PERIOD = {"start": "2000-01-01", "end": "2100-01-01"}


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> Settings:
    return make_settings(tmp_path, request, backend, erasure_waiting_days=0)


class Staff:
    """Browser-like clients for staff members, each with their own passkey."""

    def __init__(self, app: Litestar, portal: Portal) -> None:
        self.app, self.portal = app, portal
        self.keys: dict[str, SoftwareAuthenticator] = {}
        self.clients: dict[str, Client] = {}

    def member(self, name: str, role: str = "privacy_officer") -> Client:
        if name not in self.clients:
            client = TestClient(self.app, base_url=ORIGIN)
            key = SoftwareAuthenticator(ORIGIN)
            assert enrol_staff(client, self.portal, key, role=role, email=f"{name}@example.org").status_code == 201
            self.keys[name], self.clients[name] = key, client
        return self.clients[name]

    def step_up(self, name: str) -> None:
        assert step_up(self.member(name), self.keys[name]).status_code == 201


@pytest.fixture
def staff(app: Litestar, portal: Portal) -> Iterator[Staff]:
    yield Staff(app, portal)


def _completed_erasure(client: Client, portal: Portal, staff: Staff) -> str:
    """A patient asks for erasure, two officers approve, the embedded worker carries it out."""
    key = SoftwareAuthenticator(ORIGIN)
    _enrol_old_patient(client, portal, key)
    assert step_up(client, key, "erasure").status_code == 201
    response = post_form(client, "/requests/erasure", {"understood": "yes"})
    assert response.status_code == 303, response.text
    request_id = str(response.headers["location"].rsplit("/", 1)[1])
    for officer in ("olivia", "oscar"):
        staff.step_up(officer)
        assert post_form(staff.member(officer), f"/staff/requests/{request_id}/approve").status_code == 303
    _wait(lambda: portal.requests.view(request_id).request.status in ("completed", "partially_completed"))
    return request_id


def _enrol_old_patient(client: Client, portal: Portal, key: SoftwareAuthenticator) -> None:
    """A patient last treated in 2009: most retention periods have ended, so most categories are erased."""
    bundle = generate_patient_bundle(303, size="small", today=date(2009, 6, 1))
    portal.records.import_bundle(bundle, actor="system:test")
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    assert confirm_birth_date(client, token, patient["birthDate"]).status_code == 303
    assert register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", key).status_code == 201


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _built(portal: Portal, pack_id: str) -> bytes:
    portal.evidence.build(pack_id)  # the embedded worker may have built it already: then this is a no-op
    with portal.db.read() as session:
        pack = session.get(EvidencePack, pack_id)
        assert pack is not None and pack.body is not None
        return bytes(pack.body)


def _files(pack: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(pack))
    return {name: archive.read(name) for name in archive.namelist()}


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _failures(pack: bytes, **options: object) -> dict[str, str]:
    return {check.name: check.detail for check in verify_pack(pack, **options) if not check.ok}  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the pack


def test_pack_for_a_completed_erasure_verifies_and_says_what_happened(
    client: Client, portal: Portal, staff: Staff
) -> None:
    request_id = _completed_erasure(client, portal, staff)
    pack = portal.evidence.request_pack("request", {"request": request_id}, recipient_id=None, actor="staff:t")
    data = _built(portal, pack.id)

    results = verify_pack(data)
    assert all(check.ok for check in results), results
    files = _files(data)
    assert {
        "report.pdf",
        "requests.json",
        "requests.csv",
        "audit-events.ndjson",
        "ledger/entries.ndjson",
        "ledger/proofs.json",
        "ledger/checkpoint.txt",
        "ledger/verifier-key.txt",
        f"certificates/{request_id}.json",
        "public-key.pem",
        "public-key-fingerprint.txt",
        "verify.py",
        "VERIFY.md",
        "manifest.json",
        "manifest.json.jws",
    } <= set(files)
    assert files["verify.py"] == Path("portal/evidence/verify_pack.py").read_bytes()
    assert is_tagged_pdf_ua(files["report.pdf"])
    log = json.loads(files["requests.json"])
    record = log["requests"][0]
    assert record["deadlines"]["outcome"] == "met"
    assert [a["name"] for a in record["approvals"]] == ["Test Officer", "Test Officer"]
    assert all(a["stepup"]["user_verified"] for a in record["approvals"])
    assert record["identity_verification"]["method"].startswith("passkey")
    actions = {step["action"] for step in record["timeline"]}
    assert actions >= {"submit", "verify", "approve", "start"} and actions & {"complete", "complete_partially"}
    assert "erase" in {item["step"] for item in record["plan"]}
    assert all(item["legal_basis"] for item in record["plan"])
    assert record["sources_searched"] and all(check["ok"] for check in record["sources_searched"])
    seqs = {json.loads(line)["seq"] for line in files["ledger/entries.ndjson"].splitlines()}
    assert {item["ledger_seq"] for item in [record["identity_verification"]]} <= seqs
    events = [json.loads(line) for line in files["audit-events.ndjson"].splitlines()]
    assert len(events) == len(seqs) and all(e["resourceType"] == "AuditEvent" for e in events)
    assert b"dsar.category_erased" in files["ledger/entries.ndjson"]


def test_verify_py_runs_with_only_python_and_cryptography(client: Client, portal: Portal, tmp_path: Path) -> None:
    """verify.py from the pack, run without site-packages (-S): only a folder holding ``cryptography`` and
    cffi is on the path, and the same interpreter then cannot import the portal or PyJWT."""
    pack = portal.evidence.request_pack("period", PERIOD, recipient_id=None, actor="t")
    data = _built(portal, pack.id)
    (tmp_path / "pack.zip").write_bytes(data)
    (tmp_path / "verify.py").write_bytes(_files(data)["verify.py"])
    site = tmp_path / "site"
    site.mkdir()
    packages = Path(cryptography.__file__).parent.parent
    for entry in packages.iterdir():
        if entry.name in ("cryptography", "cffi") or entry.name.startswith("_cffi_backend"):
            (site / entry.name).symlink_to(entry)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
        command = [sys.executable, "-S", "-s", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60)

    result = run("verify.py", "pack.zip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every check passed." in result.stdout
    assert result.stdout.count("PASS") == 7
    for module in ("portal", "jwt", "sqlalchemy"):
        assert run("-c", f"import {module}").returncode != 0, f"{module} was importable"


# ---------------------------------------------------------------------- tampering


@pytest.fixture
def pack_files(client: Client, portal: Portal, staff: Staff) -> dict[str, bytes]:
    request_id = _completed_erasure(client, portal, staff)
    pack = portal.evidence.request_pack("request", {"request": request_id}, recipient_id=None, actor="staff:t")
    return _files(_built(portal, pack.id))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_changing_one_byte_of_any_file_is_named(pack_files: dict[str, bytes]) -> None:
    for name, data in pack_files.items():
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        failures = _failures(_zip({**pack_files, name: bytes(changed)}))
        assert failures, f"a changed {name} went unnoticed"
        if name not in ("manifest.json", "manifest.json.jws", "public-key.pem"):
            assert f"{name} was changed" in failures["file hashes"], failures


@pytest.mark.parametrize("backend", ["sqlite"])
def test_removing_or_adding_a_file_is_named(pack_files: dict[str, bytes]) -> None:
    removed = {k: v for k, v in pack_files.items() if k != "requests.csv"}
    assert "requests.csv is listed in the manifest but missing" in _failures(_zip(removed))["file hashes"]
    added = {**pack_files, "extra.txt": b"trust me"}
    assert "extra.txt was added" in _failures(_zip(added))["file hashes"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_signing_with_another_key_fails(pack_files: dict[str, bytes], portal: Portal) -> None:
    other = Ed25519PrivateKey.generate()
    resigned = {**pack_files, "manifest.json.jws": sign_bytes(pack_files["manifest.json"], other).encode()}
    assert "does not verify" in _failures(_zip(resigned))["manifest signature"]
    # A forger who also swaps the public key is caught by the fingerprint the regulator was given,
    # and by the ledger checkpoint, which only the portal's key signed.
    swapped = {**resigned, "public-key.pem": public_key_pem(other.public_key())}
    failures = _failures(_zip(swapped), fingerprint=portal.evidence.fingerprint())
    assert "signed with a different key" in failures["public key"]
    assert "mixes two signers" in failures["ledger checkpoint"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_edited_ledger_entry_fails_its_inclusion_proof(pack_files: dict[str, bytes], portal: Portal) -> None:
    """Even with the manifest re-signed by the portal's own key, an altered entry is not in the signed tree."""
    lines = pack_files["ledger/entries.ndjson"].split(b"\n")
    lines[0] = lines[0].replace(b'"outcome":"success"', b'"outcome":"failure"')
    files = {**pack_files, "ledger/entries.ndjson": b"\n".join(lines)}
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["ledger/entries.ndjson"]["sha256"] = hashlib.sha256(files["ledger/entries.ndjson"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    files["manifest.json.jws"] = sign_bytes(files["manifest.json"], portal.keys.signing_key()).encode()
    assert "inclusion proof fails" in _failures(_zip(files))["ledger inclusion"]


# ---------------------------------------------------------------------- regulators as witnesses


def _rewrite_history(portal: Portal) -> None:
    """An insider with database and key access rewrites entry 1 and re-signs the checkpoints."""
    with portal.db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            for table in ("ledger_entries", "ledger_checkpoints"):
                conn.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
        else:
            for trigger in ("entries_no_update", "checkpoints_no_delete"):
                conn.execute(text(f"DROP TRIGGER ledger_{trigger}"))
        entry = conn.scalar(select(LedgerEntry.entry).where(LedgerEntry.seq == 1))
        assert entry is not None
        forged = bytes(entry).replace(b'"outcome":"success"', b'"outcome":"failure"')
        conn.execute(
            update(LedgerEntry).where(LedgerEntry.seq == 1).values(entry=forged, leaf_hash=merkle.leaf_hash(forged))
        )
        conn.execute(text("DELETE FROM ledger_checkpoints"))


def test_regulator_witness_catches_a_rewritten_ledger(client: Client, portal: Portal, tmp_path: Path) -> None:
    regulator = portal.evidence.add_regulator("Data Protection Authority", "dpa@example.org", "DPA-1", actor="t")
    first = portal.evidence.request_pack("period", PERIOD, recipient_id=regulator.id, actor="t")
    first_data = _built(portal, first.id)
    portal.evidence.download_file(first.id, actor="staff:t")  # delivered: the regulator now holds its checkpoint
    kept = _files(first_data)["ledger/checkpoint.txt"]

    # An honest second pack extends the first, against the regulator's own copy too.
    portal.ledger.record(AuditEvent(action="test.more", actor="t"))
    second = portal.evidence.request_pack("period", PERIOD, recipient_id=regulator.id, actor="t")
    second_data = _built(portal, second.id)
    assert _failures(second_data, previous_checkpoint=kept) == {}
    assert "ledger/previous-checkpoint.txt" in _files(second_data)

    _rewrite_history(portal)
    third = portal.evidence.request_pack("period", PERIOD, recipient_id=regulator.id, actor="t")
    failures = _failures(_built(portal, third.id), previous_checkpoint=kept)
    assert "the ledger was rewritten since" in failures["ledger consistency"], failures


@pytest.mark.parametrize("backend", ["sqlite"])
def test_cli_prints_each_check_and_fails_on_a_tampered_pack(pack_files: dict[str, bytes], tmp_path: Path) -> None:
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(_zip(pack_files))
    bad.write_bytes(_zip({**pack_files, "requests.csv": pack_files["requests.csv"] + b"x"}))
    passed = CliRunner().invoke(cli, ["evidence", "verify", str(good)])
    assert passed.exit_code == 0, passed.output
    assert passed.output.count("PASS") == 7 and "Every check passed." in passed.output
    failed = CliRunner().invoke(cli, ["evidence", "verify", str(bad)])
    assert failed.exit_code == 1
    assert "FAIL  file hashes: requests.csv was changed" in failed.output


def test_a_pack_whose_build_gave_up_says_so(portal: Portal) -> None:
    from portal.jobs.models import Job, JobStatus

    pack = portal.evidence.request_pack("period", PERIOD, recipient_id=None, actor="t")
    assert portal.evidence.build_failure(portal.evidence.pack(pack.id)) is None
    with portal.db.write() as session:
        session.execute(update(Job).values(status=JobStatus.failed, last_error="OSError: disk full"))
    assert portal.evidence.build_failure(portal.evidence.pack(pack.id)) == "OSError: disk full"


def test_pack_for_an_access_dispute_verifies_and_holds_the_case(portal: Portal) -> None:
    from tests.support.accounts import new_patient
    from tests.support.balp import balp_event

    mrn, _birth = new_patient(portal)
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    assert portal.access.ingest([balp_event("dispute-1", mrn)], sender="test-ehr").count("accepted") == 1
    ((event,), _total) = run_async(portal.access.timeline, patient_id, TimelineFilter())
    case = portal.cases.open_case(patient_id, event.id, "I was not treated that day", actor="patient:t")
    portal.cases.close(case.id, "not_justified", "The access was not needed for care.", actor="staff:t")
    with pytest.raises(EvidenceError, match="no access case"):
        portal.evidence.request_pack("case", {"case": "nope"}, recipient_id=None, actor="staff:t")
    pack = portal.evidence.request_pack("case", {"case": case.id}, recipient_id=None, actor="staff:t")
    files = _files(_built(portal, pack.id))
    assert _failures(_zip(files)) == {}
    log = json.loads(files["requests.json"])
    assert [c["id"] for c in log["access_cases"]] == [case.id]
    assert "The access was not needed for care." in files["requests.json"].decode()
    assert "I was not treated that day" not in files["requests.json"].decode()  # the patient's own words stay out
