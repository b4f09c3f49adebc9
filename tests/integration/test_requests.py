"""Export and erasure requests end to end over HTTP: patient, two officers, the embedded worker."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fhir.resources.R4B import get_fhir_model_class
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from portal.access.models import AccessEvent
from portal.backup import create_backup
from portal.container import Portal, build_portal
from portal.dsar.models import DataRequest, Recipient, RequestEvent
from portal.dsar.service import AUTO_APPROVE_EXPORTS, RequestError
from portal.dsar.signed import verify_bytes, verify_document
from portal.records.models import PatientIdentifier, Resource
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from portal.security.keystore import KeyDestroyedError
from portal.settings import Settings
from tests.conftest import ORIGIN, make_settings
from tests.support.accounts import (
    enrol_patient,
    enrol_staff,
    post_form,
    sign_out,
    step_up,
    token_of,
)
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.balp import balp_event
from tests.support.pdf import is_tagged_pdf_ua

Client = TestClient[Litestar]


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> Settings:
    # No waiting period here, so erasures run as soon as they are approved; the waiting period
    # has tests of its own below.
    return make_settings(tmp_path, request, backend, erasure_waiting_days=0)


class People:
    """One browser-like client per person: the patient and two privacy officers."""

    def __init__(self, app: Litestar, portal: Portal, patient: Client) -> None:
        self.app, self.portal, self.patient = app, portal, patient
        self.keys: dict[str, SoftwareAuthenticator] = {}
        self.clients: dict[str, Client] = {}

    def officer(self, name: str, role: str = "privacy_officer") -> Client:
        if name not in self.clients:
            client = TestClient(self.app, base_url=ORIGIN)
            key = SoftwareAuthenticator(ORIGIN)
            enrolled = enrol_staff(client, self.portal, key, role=role, email=f"{name}@example.org")
            assert enrolled.status_code == 201, enrolled.text
            self.keys[name], self.clients[name] = key, client
        return self.clients[name]

    def step_up(self, name: str) -> None:
        assert step_up(self.officer(name), self.keys[name]).status_code == 201


@pytest.fixture
def people(app: Litestar, portal: Portal, client: Client) -> Iterator[People]:
    # Officers' clients share the app (and its embedded worker) with the patient's; they are never
    # entered as context managers, so they start no second worker.
    yield People(app, portal, client)


def _patient(client: Client, portal: Portal, key: SoftwareAuthenticator, *, old: bool = False) -> str:
    """Enrol a patient; with ``old`` their last treatment was long ago, so retention has ended."""
    if not old:
        enrol_patient(client, portal, key)
        return _patient_id(portal)
    bundle = generate_patient_bundle(303, size="small", today=date(2009, 6, 1))
    portal.records.import_bundle(bundle, actor="system:test")
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    year, month, day = patient["birthDate"].split("-")
    assert client.get(f"/enrol/{token}").status_code == 200
    post_form(client, f"/enrol/{token}/birth-date", {"day": day, "month": month, "year": year})
    from tests.support.accounts import register

    assert register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", key).status_code == 201
    return _patient_id(portal)


def _patient_id(portal: Portal) -> str:
    with portal.db.read() as session:
        ids = list(session.scalars(select(PatientIdentifier.patient_id).distinct()))
    assert len(ids) == 1
    return str(ids[0])


def _wait_for(portal: Portal, request_id: str, *statuses: str, timeout: float = 60.0) -> DataRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = portal.requests.view(request_id).request
        if request.status in statuses:
            return request
        time.sleep(0.05)
    raise AssertionError(f"request stayed {portal.requests.view(request_id).request.status}")


def _submit_export(client: Client, key: SoftwareAuthenticator, **fields: Any) -> str:
    assert step_up(client, key, "export").status_code == 201
    response = post_form(client, "/requests/export", {"scope": "all", **fields})
    assert response.status_code == 303, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def _submit_erasure(client: Client, key: SoftwareAuthenticator) -> str:
    assert step_up(client, key, "erasure").status_code == 201
    response = post_form(client, "/requests/erasure", {"understood": "yes"})
    assert response.status_code == 303, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def _approve(people: People, name: str, request_id: str) -> Any:
    people.step_up(name)
    return post_form(people.officer(name), f"/staff/requests/{request_id}/approve")


# ---------------------------------------------------------------------- export


def test_export_needs_a_fresh_step_up(client: Client, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(client, portal, key)
    response = post_form(client, "/requests/export", {"scope": "all"})
    assert response.status_code == 400
    assert "confirm it is you with your passkey" in response.text
    assert portal.requests.patient_requests(_patient_id(portal)) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scope": "some"}, "tick at least one category"),
        ({"scope": "some", "categories": "nonsense"}, "unknown category: nonsense"),
        ({"start": "2020-13-01"}, "From: enter a date as YYYY-MM-DD"),
        ({"start": "2024-05-01", "end": "2024-01-01"}, "the From date must be on or before the To date"),
        ({"scope": "everything"}, "choose all your data or some categories"),
    ],
)
def test_export_form_errors_are_explained_and_nothing_is_created(
    client: Client, portal: Portal, fields: dict[str, str], message: str
) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(client, portal, key)
    assert step_up(client, key).status_code == 201
    response = post_form(client, "/requests/export", {"scope": "all", **fields})
    assert response.status_code == 400
    assert message in response.text
    assert portal.requests.patient_requests(_patient_id(portal)) == []


def test_export_approved_built_downloaded_and_verifiable(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    patient_id = _patient(people.patient, portal, key)
    mrn = _mrn(portal, patient_id)
    ingested = portal.access.ingest([balp_event(f"e{n}", mrn) for n in range(3)], sender="test-ehr")
    assert ingested.count("accepted") == 3
    request_id = _submit_export(people.patient, key)
    assert portal.requests.view(request_id).request.status == "verified"
    assert "Identity confirmed" in people.patient.get(f"/requests/{request_id}").text

    assert _approve(people, "olivia", request_id).status_code == 303
    _wait_for(portal, request_id, "completed")
    status = people.patient.get(f"/requests/{request_id}/status").text
    assert "Your export is ready" in status
    assert 'hx-trigger="every' not in status  # polling stops once done

    response = post_form(people.patient, f"/requests/{request_id}/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    files = {name: archive.read(name) for name in archive.namelist()}
    _assert_signed_manifest(files, portal)
    bundle = json.loads(files["fhir/bundle.json"])
    get_fhir_model_class("Bundle").model_validate(bundle)
    kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert {"Patient", "Encounter", "Consent", "AuditEvent", "Provenance"} <= kinds
    assert bundle["type"] == "collection"
    assert "csv/Encounter.csv" in files
    assert is_tagged_pdf_ua(files["summary.pdf"])

    # The download is in the ledger and in the patient's own access history.
    assert portal.ledger.entries_for_subject(patient_id, actions=["dsar.export_downloaded"])
    with portal.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AccessEvent).where(AccessEvent.origin == "portal"))


def _mrn(portal: Portal, patient_id: str) -> str:
    patient = portal.records.patient_resource(patient_id, actor="system:test", purpose="TEST")
    assert patient is not None
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM))


def _assert_signed_manifest(files: dict[str, bytes], portal: Portal) -> None:
    public = load_pem_public_key(files["public-key.pem"])
    assert isinstance(public, Ed25519PublicKey)
    assert public.public_bytes_raw() == portal.keys.signing_key().public_key().public_bytes_raw()
    verify_bytes(files["manifest.json.jws"].decode(), files["manifest.json"], public)
    manifest = json.loads(files["manifest.json"])
    listed = set(manifest["files"])
    assert listed == set(files) - {"manifest.json", "manifest.json.jws"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"], name
    with pytest.raises(ValueError, match="differs"):
        verify_bytes(files["manifest.json.jws"].decode(), files["manifest.json"] + b" ", public)


def test_scoped_export_holds_only_the_chosen_categories_and_dates(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(
        people.patient, key, scope="some", categories="medications", start="2020-01-01", end="2024-12-31"
    )
    assert _approve(people, "olivia", request_id).status_code == 303
    _wait_for(portal, request_id, "completed")
    data, _name = portal.requests.download_export(_session(portal, people.patient), _patient_id(portal), request_id)
    bundle = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("fhir/bundle.json"))
    kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert kinds <= {"MedicationRequest", "Medication", "MedicationStatement", "Provenance"}
    for entry in bundle["entry"]:
        authored = entry["resource"].get("authoredOn")
        if authored:
            assert "2020-01-01" <= authored[:10] <= "2024-12-31"


def _session(portal: Portal, client: Client) -> Any:
    from portal.security.sessions import COOKIE_NAME

    loaded = portal.sessions.load(client.cookies.get(COOKIE_NAME, domain="portal.test") or "")
    assert loaded is not None
    return loaded


def test_auto_approved_export_needs_no_officer(people: People, portal: Portal) -> None:
    portal.requests.set_policy(AUTO_APPROVE_EXPORTS, True, actor="staff:admin")
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    done = _wait_for(portal, request_id, "completed")
    assert done.auto_approved
    actions = [item.action for item in portal.requests.view(request_id).timeline]
    assert actions == ["submit", "verify", "auto_approve", "start", "complete"]


def test_a_second_open_export_is_refused(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    _submit_export(people.patient, key)
    response = post_form(people.patient, "/requests/export", {"scope": "all"})
    assert response.status_code == 400
    assert "you already have an open export request" in response.text


def test_expired_exports_are_purged_and_can_no_longer_be_downloaded(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    patient_id = _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    _approve(people, "olivia", request_id)
    _wait_for(portal, request_id, "completed")
    web_session = _session(portal, people.patient)
    real = portal.requests.clock
    portal.requests.clock = lambda: real() + __import__("datetime").timedelta(days=8)
    try:
        with pytest.raises(RequestError, match="expired"):
            portal.requests.download_export(web_session, patient_id, request_id)
        assert portal.requests.tick()["exports_purged"] == 1
    finally:
        portal.requests.clock = real
    with pytest.raises(RequestError, match="no longer available"):
        portal.requests.download_export(web_session, patient_id, request_id)


# ---------------------------------------------------------------------- officers' decisions


def test_deny_needs_a_reason_and_the_patient_sees_it_with_how_to_complain(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    officer = people.officer("olivia")
    empty = post_form(officer, f"/staff/requests/{request_id}/deny", {"text": "  "})
    assert empty.status_code == 400
    assert "give the reason the patient will see" in empty.text
    assert (
        post_form(officer, f"/staff/requests/{request_id}/deny", {"text": "Duplicate of a request"}).status_code == 303
    )
    page = people.patient.get(f"/requests/{request_id}").text
    assert "Duplicate of a request" in page
    assert "supervisory authority" in page
    again = _approve(people, "olivia", request_id)
    assert again.status_code == 400
    assert "cannot be approved" in again.text


def test_question_to_the_patient_pauses_the_clock(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    before = portal.requests.view(request_id).deadlines
    officer = people.officer("olivia")
    assert post_form(officer, f"/staff/requests/{request_id}/ask", {"text": "Which years?"}).status_code == 303
    assert "Which years?" in people.patient.get(f"/requests/{request_id}").text
    real = portal.requests.clock
    portal.requests.clock = lambda: real() + __import__("datetime").timedelta(days=3)
    try:
        reply = post_form(people.patient, f"/requests/{request_id}/reply", {"text": "All of them"})
        assert reply.status_code == 303
    finally:
        portal.requests.clock = real
    after = portal.requests.view(request_id)
    assert after.request.status == "in_review"
    assert round((after.deadlines.gdpr - before.gdpr).total_seconds() / 86400) == 3
    assert round((after.deadlines.hipaa - before.hipaa).total_seconds() / 86400) == 3


def test_extension_once_with_a_reason_before_the_first_deadline(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    before = portal.requests.view(request_id).deadlines
    officer = people.officer("olivia")
    assert post_form(officer, f"/staff/requests/{request_id}/extend", {"text": "Records in archive"}).status_code == 303
    after = portal.requests.view(request_id).deadlines
    assert (after.hipaa - before.hipaa).days == 30
    assert after.gdpr.month == (before.gdpr.month + 1) % 12 + 1 or after.gdpr > before.gdpr
    twice = post_form(officer, f"/staff/requests/{request_id}/extend", {"text": "again"})
    assert twice.status_code == 400
    assert "extended only once" in twice.text
    assert "Records in archive" in people.patient.get(f"/requests/{request_id}").text


def test_two_officers_approving_at_once_make_one_transition(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    people.step_up("olivia")
    people.step_up("oscar")
    sessions = [_session(portal, people.officer(name)) for name in ("olivia", "oscar")]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def approve(web_session: Any) -> None:
        barrier.wait()
        try:
            outcomes.append(portal.requests.approve(request_id, web_session).value)
        except RequestError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=approve, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("approved") == 1
    # The loser sees why (the worker may already have started the export).
    (refused,) = [o for o in outcomes if o != "approved"]
    assert refused.startswith("this request is ")
    assert refused.endswith("so it cannot be approved now")
    with portal.db.read() as session:
        approvals = session.scalar(
            select(func.count())
            .select_from(RequestEvent)
            .where(RequestEvent.request_id == request_id, RequestEvent.action == "approve")
        )
    assert approvals == 1


# ---------------------------------------------------------------------- erasure


def test_erasure_needs_two_different_officers_then_erases_verifies_and_certifies(
    people: People, portal: Portal
) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    patient_id = _patient(people.patient, portal, key, old=True)
    with portal.db.write() as session:
        session.add(Recipient(name="Regional Health Information Exchange", contact="notices@hie.example"))
    portal.consent.change(patient_id, "hie-sharing", "grant", actor="patient:test", channel="portal")
    page = people.patient.get("/requests/new/erasure").text
    assert "Erased" in page and "Kept until" in page  # the plan is shown before submitting
    request_id = _submit_erasure(people.patient, key)

    assert _approve(people, "olivia", request_id).status_code == 303
    assert portal.requests.view(request_id).request.status == "in_review"
    same = _approve(people, "olivia", request_id)
    assert same.status_code == 400
    assert "a second, different officer must approve" in same.text
    assert _approve(people, "oscar", request_id).status_code == 303

    done = _wait_for(portal, request_id, "completed", "partially_completed")
    view = portal.requests.view(request_id)
    erased = [item.category for item in view.plan if item.step == "erase"]
    assert {"clinical", "medications", "demographics"} <= set(erased)
    assert _resources_in(portal, patient_id, erased) == 0
    with portal.db.read() as session:
        assert session.scalar(select(func.count()).select_from(PatientIdentifier)) == 0
    for category in erased:
        with pytest.raises((KeyDestroyedError, LookupError)):
            portal.keys.data_key(patient_id, category)

    signed = portal.requests.certificate(request_id, patient_id=patient_id)
    document = verify_document(signed, portal.keys.signing_key().public_key())
    assert document["verification"]["passed"] is True
    get_fhir_model_class("Provenance").model_validate(document["provenance"])
    assert document["provenance"]["activity"]["coding"][0]["code"] == "DELETE"
    assert {a["officer"] for a in document["approved_by"]} == {_account_of(portal, n) for n in ("olivia", "oscar")}
    assert document["recipients_notified"] == ["Regional Health Information Exchange"]
    assert {e["category"] for e in document["erased"]} == set(erased)
    assert done.status in {"completed", "partially_completed"}
    pdf = people.patient.get(f"/requests/{request_id}/certificate/pdf")
    assert pdf.status_code == 200
    assert is_tagged_pdf_ua(pdf.content)
    tampered = dict(signed, document={**signed["document"], "subject": "someone-else"})
    with pytest.raises(ValueError, match="differs"):
        verify_document(tampered, portal.keys.signing_key().public_key())


def _resources_in(portal: Portal, patient_id: str, categories: list[str]) -> int:
    with portal.db.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Resource)
                .where(Resource.patient_id == patient_id, Resource.category.in_(categories))
            )
            or 0
        )


def _account_of(portal: Portal, name: str) -> str:
    account = next(a for a in portal.accounts.staff_accounts() if a.email == f"{name}@example.org")
    return account.id


def test_erasure_is_not_brought_back_by_restoring_an_old_backup(
    people: People, portal: Portal, request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    patient_id = _patient(people.patient, portal, key, old=True)
    old_backup = create_backup(portal.db.engine, portal.keys.ring, tmp_path / "before.backup").path
    request_id = _submit_erasure(people.patient, key)
    _approve(people, "olivia", request_id)
    _approve(people, "oscar", request_id)
    _wait_for(portal, request_id, "completed", "partially_completed")
    erased = [item.category for item in portal.requests.view(request_id).plan if item.step == "erase"]

    # A backup taken now holds none of the erased rows.
    new_backup = create_backup(portal.db.engine, portal.keys.ring, tmp_path / "after.backup")
    with portal.db.read() as session:
        kept = session.scalar(select(func.count()).select_from(Resource))
    assert new_backup.rows["resources"] == kept
    assert _resources_in(portal, patient_id, erased) == 0

    # Restore the old backup into an empty database that shares the live key store.
    fresh = {"database_url": f"sqlite:///{tmp_path / 'restored.sqlite3'}"} if backend == "sqlite" else {}
    shared = {"data_dir": portal.settings.data_dir, "keystore_url": portal.settings.keystore_url}
    target = make_settings(tmp_path, request, backend, **shared, **fresh)
    restored = build_portal(target)
    try:
        from portal import migrate

        migrate.upgrade(target.keystore_url, schema=migrate.Schema.keystore)
        summary, removed = restored.restore_backup(old_backup)
        assert summary.rows["resources"] > 0
        assert removed > 0
        assert _resources_in(restored, patient_id, erased) == 0
    finally:
        restored.close()


def test_patient_can_cancel_during_the_waiting_period(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    settings = make_settings(tmp_path, request, backend, erasure_waiting_days=7)
    from portal import migrate
    from portal.app import create_app

    portal = build_portal(settings)
    migrate.upgrade_all(settings.database_url, settings.keystore_url)
    portal.consent.ensure_defaults()
    app = create_app(settings, portal)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            people = People(app, portal, client)
            key = SoftwareAuthenticator(ORIGIN)
            patient_id = _patient(client, portal, key, old=True)
            request_id = _submit_erasure(client, key)
            assert "download a copy of your data" in client.get(f"/requests/{request_id}").text
            _approve(people, "olivia", request_id)
            _approve(people, "oscar", request_id)
            assert portal.requests.view(request_id).request.status == "approved"
            assert portal.requests.run_erasure(request_id) == {"skipped": True}  # still waiting
            assert post_form(client, f"/requests/{request_id}/cancel").status_code == 303
            assert portal.requests.view(request_id).request.status == "cancelled"
            assert portal.requests.run_erasure(request_id) == {"skipped": True}
            assert portal.records.counts(patient_id).get("clinical", 0) > 0
    finally:
        portal.close()


def test_nobody_else_sees_a_patients_request(people: People, portal: Portal) -> None:
    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    sign_out(people.patient)
    other = SoftwareAuthenticator(ORIGIN)
    enrol_patient(people.patient, portal, other, seed=202)
    assert people.patient.get(f"/requests/{request_id}").status_code == 404
    assert post_form(people.patient, f"/requests/{request_id}/cancel").status_code == 404
    assert portal.requests.view(request_id).request.status == "verified"


def test_categories_kept_by_law_are_hidden_from_normal_use(portal: Portal) -> None:
    from tests.support.accounts import new_patient

    mrn, _birth = new_patient(portal)
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    assert portal.consent.decide(patient=mrn, purpose="hie-sharing", recipient=None, actor="x").decision == "permit"
    (clinical,) = [item for item in portal.requests.eraser.plan(patient_id) if item.category == "clinical"]
    assert clinical.step == "retain"
    assert clinical.retain_until is not None
    portal.requests.eraser.restrict(patient_id, clinical, request_id="r-1")

    normal = portal.records.read(patient_id, actor="system:test", purpose="TREAT")
    assert "clinical" not in {item.category for item in normal}
    held = portal.records.read(patient_id, actor="system:test", purpose="PATRQT", include_restricted=True)
    assert "clinical" in {item.category for item in held}
    decision = portal.consent.decide(patient=mrn, purpose="hie-sharing", recipient=None, actor="x")
    assert decision.decision == "deny"
    assert "asked for erasure" in decision.reason


def test_admin_registers_recipients_with_validation(client: Client, portal: Portal) -> None:
    from tests.conftest import sign_in

    sign_in(client, portal, kind="staff", roles=frozenset({"privacy_admin"}))
    bad = post_form(client, "/staff/requests/recipients", {"name": "HIE", "contact": "not-an-address"})
    assert bad.status_code == 303
    assert "recipient_error" in bad.headers["location"]
    assert portal.requests.recipients() == []
    good = post_form(client, "/staff/requests/recipients", {"name": "HIE", "contact": "notices@hie.example"})
    assert good.status_code == 303
    assert [(r.name, r.contact) for r in portal.requests.recipients()] == [("HIE", "notices@hie.example")]
    assert "notices@hie.example" in client.get("/staff/requests").text


@pytest.mark.parametrize(
    ("kind", "roles", "path", "expected"),
    [
        ("patient", frozenset(), "/staff/requests", 403),
        ("staff", frozenset({"regulator"}), "/staff/requests", 403),
        ("staff", frozenset({"privacy_officer"}), "/requests", 403),
        ("staff", frozenset({"privacy_officer"}), "/staff/requests", 200),
    ],
)
def test_request_pages_by_role(
    client: Client, portal: Portal, kind: Any, roles: frozenset[str], path: str, expected: int
) -> None:
    """ASVS 5.0 V8.2.1: function-level access control on every request page."""
    from tests.conftest import sign_in

    sign_in(client, portal, kind=kind, roles=roles)
    assert client.get(path).status_code == expected


def test_only_admins_change_the_auto_approval_policy(client: Client, portal: Portal) -> None:
    """ASVS 5.0 V8.2.1: an officer cannot change a policy only admins may set."""
    from tests.conftest import sign_in

    sign_in(client, portal, kind="staff", roles=frozenset({"privacy_officer"}))
    assert post_form(client, "/staff/requests/policy", {"auto_approve_exports": "1"}).status_code == 403
    assert portal.requests.policy(AUTO_APPROVE_EXPORTS) is False


def _failure_recorded(portal: Portal) -> bool:
    from portal.jobs.models import Job, JobStatus

    with portal.db.read() as session:
        job = session.scalars(select(Job).where(Job.kind == "dsar.export")).first()
    return job is not None and job.last_error is not None and job.status != JobStatus.running


def test_a_request_whose_worker_gave_up_is_shown_stalled_and_retried_by_the_tick(
    people: People, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from portal.jobs.models import Job, JobStatus

    key = SoftwareAuthenticator(ORIGIN)
    _patient(people.patient, portal, key)
    request_id = _submit_export(people.patient, key)
    failures: list[int] = []

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        failures.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(portal.requests.exporter, "build", broken)
    _approve(people, "olivia", request_id)
    deadline = time.monotonic() + 30
    while not _failure_recorded(portal) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures
    # The worker would retry with backoff and then give up; give up now (once it has recorded the
    # failed attempt, which would otherwise overwrite this).
    with portal.db.write() as session:
        session.execute(update(Job).where(Job.kind == "dsar.export").values(status=JobStatus.failed))
    request = portal.requests.view(request_id).request
    assert request.status == "processing"
    assert portal.requests.stalled(request)
    assert "This request is stalled" in people.officer("olivia").get(f"/staff/requests/{request_id}").text

    monkeypatch.undo()
    assert portal.requests.tick()["rescheduled"] == 1
    _wait_for(portal, request_id, "completed")
    assert not portal.requests.stalled(portal.requests.view(request_id).request)
