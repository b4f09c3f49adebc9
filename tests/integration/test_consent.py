"""The consent centre: one-click grant and withdraw, history, signed receipts, FHIR Consent, decisions."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fhir.resources.R4B.consent import Consent
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from portal.consent.models import ConsentDecision, ConsentEvent
from portal.consent.receipts import verify_receipt
from portal.consent.service import ConsentError, render_notice
from portal.container import Portal
from tests.conftest import ORIGIN
from tests.support.accounts import enrol_patient, new_patient, post_form
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.pdf import is_tagged_pdf_ua, pdf_text

Client = TestClient[Litestar]


@pytest.fixture
def patient(client: Client, portal: Portal) -> str:
    """A signed-in, enrolled patient; returns the patient id."""
    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    return patient_id


def _state(portal: Portal, patient_id: str, code: str) -> tuple[str, bool]:
    view = next(v for v in portal.consent.overview(patient_id) if v.purpose.code == code)
    return view.state, view.permitted


def test_defaults_nothing_pre_ticked_for_opt_in(client: Client, patient: str, portal: Portal) -> None:
    page = client.get("/consent")
    assert page.status_code == 200
    assert _state(portal, patient, "research-deidentified") == ("default", False)
    assert _state(portal, patient, "hie-sharing") == ("default", True), "opt-out purpose: on until objected"
    assert page.text.count("Give consent") == 5 and page.text.count("Withdraw consent") == 1


def test_grant_and_withdraw_with_one_click_each_without_javascript(
    client: Client, patient: str, portal: Portal
) -> None:
    granted = post_form(client, "/consent/research-deidentified", {"event": "grant"})
    assert granted.status_code == 303 and granted.headers["location"].startswith("/consent?changed=")
    assert _state(portal, patient, "research-deidentified") == ("granted", True)
    withdrawn = post_form(client, "/consent/research-deidentified", {"event": "withdraw"})
    assert withdrawn.status_code == 303
    assert _state(portal, patient, "research-deidentified") == ("withdrawn", False)


def test_htmx_change_swaps_the_card_and_the_history(client: Client, patient: str) -> None:
    from tests.conftest import csrf_token

    response = client.post(
        "/consent/reminders", data={"event": "grant"}, headers={"hx-request": "true", "x-csrftoken": csrf_token(client)}
    )
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<article id="purpose-reminders"')
    assert "Consent given. Thank you." in response.text
    assert 'id="consent-history" aria-labelledby="history-heading" hx-swap-oob="true"' in response.text


def test_history_records_notice_channel_and_actor(client: Client, patient: str, portal: Portal) -> None:
    post_form(client, "/consent/research-contact", {"event": "grant"})
    post_form(client, "/consent/research-contact", {"event": "withdraw"})
    history = portal.consent.history(patient)
    assert [event.event for event, _p, _n in history] == ["withdraw", "grant"]
    event, _purpose, notice = history[0]
    assert event.channel == "portal" and event.actor.startswith("patient:")
    assert event.notice_hash == notice.content_hash and notice.version == 1
    assert "Consent withdrawn" in client.get("/consent").text


def test_receipt_is_signed_and_verifies(client: Client, patient: str, portal: Portal) -> None:
    post_form(client, "/consent/insurer-sharing", {"event": "grant"})
    event_id = portal.consent.history(patient)[0][0].id
    download = client.get(f"/consent/receipts/{event_id}/receipt.json")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    document = download.json()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(document["publicKey"]))
    assert public.public_bytes_raw() == portal.keys.signing_key().public_key().public_bytes_raw()
    receipt = verify_receipt(document, public)
    for field in (
        "consentReceiptID",
        "piiPrincipalId",
        "piiControllers",
        "policyUrl",
        "services",
        "jurisdiction",
        "consentTimestamp",
        "event",
    ):
        assert field in receipt
    assert receipt["piiPrincipalId"] == patient and receipt["event"]["type"] == "grant"
    assert receipt["services"][0]["purposes"][0]["lawfulBasis"]
    document["receipt"]["event"]["type"] = "withdraw"
    with pytest.raises(ValueError, match="differs from what was signed"):
        verify_receipt(document, public)


def test_receipt_pdf_is_tagged_pdf_ua(client: Client, patient: str, portal: Portal) -> None:
    post_form(client, "/consent/family-results", {"event": "grant"})
    event_id = portal.consent.history(patient)[0][0].id
    pdf = client.get(f"/consent/receipts/{event_id}/receipt.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-1.7")
    assert is_tagged_pdf_ua(pdf.content)
    assert b"Consent receipt" in pdf_text(pdf.content) or b"/Title" in pdf_text(pdf.content)


def test_someone_elses_receipt_is_not_found(client: Client, patient: str, portal: Portal) -> None:
    other_mrn, _ = new_patient(portal, seed=555)
    other = portal.records.find_by_mrn(other_mrn)
    assert other is not None
    event = portal.consent.change(other, "reminders", "grant", channel="portal", actor="patient:x")
    assert client.get(f"/consent/receipts/{event.id}/receipt.json").status_code == 404


def _check_consent_invariants(resource: dict[str, Any]) -> None:
    """FHIR R4 Consent invariants ppc-1..ppc-5 (FHIRPath constraints that fhir.resources does not run)."""
    scope = resource["scope"]["coding"][0]["code"]
    assert resource.get("policy") or resource.get("policyRule"), "ppc-1: a policy or a policy rule"
    for code in ("patient-privacy", "research", "adr", "treatment"):  # ppc-2 .. ppc-5
        if scope == code:
            assert resource.get("patient"), f"scope {code} needs a patient"


@pytest.mark.parametrize("code", ["hie-sharing", "research-deidentified", "reminders"])
def test_fhir_consent_validates(client: Client, patient: str, portal: Portal, code: str) -> None:
    if code == "reminders":
        post_form(client, f"/consent/{code}", {"event": "grant"})
    response = client.get(f"/consent/fhir/{code}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/fhir+json")
    resource = response.json()
    Consent.model_validate(resource)
    _check_consent_invariants(resource)
    expected = {"hie-sharing": "permit", "research-deidentified": "deny", "reminders": "permit"}[code]
    assert resource["provision"]["type"] == expected


def test_failure_midway_leaves_no_change_and_no_receipt(
    patient: str, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> int:
        raise RuntimeError("ledger down")

    monkeypatch.setattr(portal.ledger, "append", broken)
    with pytest.raises(RuntimeError):
        portal.consent.change(patient, "reminders", "grant", channel="portal", actor="patient:x")
    with portal.db.read() as session:
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 0
        assert session.scalar(select(func.count()).select_from(ConsentDecision)) == 0


def test_concurrent_changes_never_lose_a_history_row(patient: str, portal: Portal) -> None:
    errors: list[BaseException] = []

    def change(event: str) -> None:
        try:
            portal.consent.change(patient, "research-contact", event, channel="portal", actor="patient:tab")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=change, args=(event,)) for event in ("grant", "withdraw") * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with portal.db.read() as session:
        events = session.scalar(select(func.count()).select_from(ConsentEvent))
        decision = session.get(ConsentDecision, (patient, "research-contact"))
    assert events == 8 and decision is not None and decision.revision == 8
    latest = portal.consent.history(patient)[0][0]
    assert decision.state == {"grant": "granted", "withdraw": "withdrawn"}[latest.event]


def test_staff_records_a_paper_form_change(client: Client, portal: Portal) -> None:
    from tests.conftest import sign_in

    mrn, _ = new_patient(portal, seed=321)
    sign_in(client, portal, kind="staff", roles=frozenset({"privacy_officer"}))
    missing = post_form(client, "/staff/consents", {"mrn": mrn, "purpose": "reminders", "event": "grant"})
    assert missing.status_code == 400 and "reason" in missing.text
    ok = post_form(
        client,
        "/staff/consents",
        {
            "mrn": mrn,
            "purpose": "reminders",
            "event": "grant",
            "reason": "Signed form received by post",
            "evidence_ref": "SCAN-0042",
        },
    )
    assert ok.status_code == 200 and "The change was recorded" in ok.text
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    event = portal.consent.history(patient_id)[0][0]
    assert event.channel == "staff" and event.evidence_ref == "SCAN-0042"
    report = client.get("/staff/consents/report.csv")
    assert report.status_code == 200
    assert "reminders,Appointment reminders by SMS and e-mail,opt-in,1,1,0" in report.text


def test_published_notices_are_immutable_and_new_versions_need_review(
    client: Client, patient: str, portal: Portal
) -> None:
    post_form(client, "/consent/research-deidentified", {"event": "grant"})
    draft = portal.consent.draft_notice(
        "research-deidentified", "## Updated\n\nNew registry partner.", material=True, actor="staff:admin"
    )
    portal.consent.edit_draft(draft.id, "## Updated\n\nNew registry partner, reviewed.")
    portal.consent.publish_notice(draft.id, actor="staff:admin")
    with pytest.raises(ConsentError, match="can no longer change"):
        portal.consent.edit_draft(draft.id, "sneaky edit")
    with pytest.raises(ConsentError, match="already published"):
        portal.consent.publish_notice(draft.id, actor="staff:admin")
    view = next(v for v in portal.consent.overview(patient) if v.purpose.code == "research-deidentified")
    assert view.needs_review and view.permitted and view.seen_version == 1
    assert "The notice for this purpose has changed" in client.get("/consent").text
    post_form(client, "/consent/research-deidentified", {"event": "grant"})
    view = next(v for v in portal.consent.overview(patient) if v.purpose.code == "research-deidentified")
    assert not view.needs_review and view.seen_version == 2


def test_notice_markdown_is_rendered_safely() -> None:
    html = render_notice("## Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) **bold**")
    assert "<script" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html
    assert "<h2>Title</h2>" in html and "<strong>bold</strong>" in html


def test_public_notice_page(client: Client, portal: Portal) -> None:
    page = client.get("/consent/notices/research-deidentified/1")
    assert page.status_code == 200 and "SHA-256 of this text" in page.text
    assert client.get("/consent/notices/research-deidentified/99").status_code == 404


def test_admin_creates_a_purpose_with_validation(client: Client, portal: Portal) -> None:
    from tests.conftest import sign_in

    sign_in(client, portal, kind="staff", roles=frozenset({"privacy_admin"}))
    bad = post_form(client, "/admin/consent/purposes", {"code": "Bad Code", "title": "", "categories": "nope"})
    assert bad.status_code == 400 and "code:" in bad.text and "data categories" in bad.text
    good = post_form(
        client,
        "/admin/consent/purposes",
        {
            "code": "registry",
            "title": "Cancer registry",
            "summary": "Reporting to the registry.",
            "lawful_basis": "Consent",
            "categories": "clinical",
            "recipients": "National registry",
            "jurisdiction": "EU",
            "mode": "opt-in",
            "purpose_of_use": "hresch",
        },
    )
    assert good.status_code == 200 and "Purpose registry created" in good.text
    drafted = post_form(client, "/admin/consent/registry/notices", {"text": "## Registry\n\nText."})
    assert "Draft version 1 saved" in drafted.text
    notice = portal.consent.notices("registry")[0]
    published = post_form(client, f"/admin/consent/notices/{notice.id}/publish")
    assert "is published" in published.text
    assert any(p.code == "registry" for p in portal.consent.purposes())


def _token(portal: Portal, scopes: tuple[str, ...] = ("consent:read",)) -> str:
    client_row, secret = portal.api.create_client("EHR", scopes, actor="staff:admin")
    return portal.api.issue_tokens(client_row.id, secret).access_token


def _decision(client: Client, token: str, **params: str) -> Any:
    return client.get("/api/v1/consent/decision", params=params, headers={"authorization": f"Bearer {token}"})


def test_decision_api_answers_across_a_version_change(client: Client, patient: str, portal: Portal) -> None:
    token = _token(portal)
    mrn = _mrn_of(portal, patient)
    denied = _decision(client, token, patient=mrn, purpose="research-deidentified")
    assert denied.status_code == 200
    assert denied.json()["decision"] == "deny" and "has not consented" in denied.json()["reason"]
    assert _decision(client, token, patient=mrn, purpose="hie-sharing").json()["decision"] == "permit"
    post_form(client, "/consent/research-deidentified", {"event": "grant"})
    permitted = _decision(
        client, token, patient=mrn, purpose="research-deidentified", recipient="University Hospital Research Registry"
    ).json()
    assert permitted["decision"] == "permit" and permitted["noticeVersion"] == 1
    assert permitted["consent"].startswith("Consent/")
    draft = portal.consent.draft_notice("research-deidentified", "## v2", material=True, actor="staff:a")
    portal.consent.publish_notice(draft.id, actor="staff:a")
    after = _decision(client, token, patient=mrn, purpose="research-deidentified").json()
    assert after["decision"] == "permit" and "version 2 is newer and awaits the patient" in after["reason"]
    post_form(client, "/consent/research-deidentified", {"event": "withdraw"})
    assert _decision(client, token, patient=mrn, purpose="research-deidentified").json()["decision"] == "deny"
    checks = portal.ledger.entries_for_subject(patient, actions=["consent.check"])
    assert len(checks) == 5 and checks[0]["details"]["decision"] == "deny"


def _mrn_of(portal: Portal, patient_id: str) -> str:
    from portal.records.synthetic import MRN_SYSTEM

    resource = portal.records.patient_resource(patient_id, actor="system:test", purpose="TEST")
    assert resource is not None
    return str(next(i["value"] for i in resource["identifier"] if i["system"] == MRN_SYSTEM))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"purpose": "reminders"}, "patient"),
        ({"patient": "MRN-NOPE", "purpose": "reminders"}, "patient"),
        ({"patient": "PATIENT", "purpose": ""}, "purpose"),
        ({"patient": "PATIENT", "purpose": "astrology"}, "purpose"),
        ({"patient": "PATIENT", "purpose": "reminders", "recipient": "Data broker"}, "recipient"),
    ],
)
def test_decision_api_names_the_bad_field(client: Client, portal: Portal, params: dict[str, str], field: str) -> None:
    mrn, _ = new_patient(portal, seed=777)
    params = {k: (mrn if v == "PATIENT" else v) for k, v in params.items()}
    response = _decision(client, _token(portal), **params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


def test_decision_api_needs_the_consent_scope(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal, seed=778)
    response = _decision(client, _token(portal, ("records:write",)), patient=mrn, purpose="reminders")
    assert response.status_code == 403
    assert json.loads(response.text)["status"] == 403


def test_decision_api_denies_only_the_purposes_that_use_a_category_kept_by_law(client: Client, portal: Portal) -> None:
    """After an erasure keeps "clinical" data by law, purposes using it are denied; the others still follow
    the patient's choice (the decision statement flags any restriction, a second read compares categories)."""
    mrn, _ = new_patient(portal, seed=779)
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    (clinical,) = [item for item in portal.requests.eraser.plan(patient_id) if item.category == "clinical"]
    portal.requests.eraser.restrict(patient_id, clinical, request_id="r-1")
    token = _token(portal)
    restricted = _decision(client, token, patient=mrn, purpose="hie-sharing").json()
    assert restricted["decision"] == "deny" and "asked for erasure" in restricted["reason"]
    untouched = _decision(client, token, patient=mrn, purpose="reminders").json()
    assert untouched["decision"] == "deny" and "has not consented" in untouched["reason"]
    portal.consent.change(patient_id, "reminders", "grant", channel="portal", actor=f"patient:{patient_id}")
    assert _decision(client, token, patient=mrn, purpose="reminders").json()["decision"] == "permit"
