"""Regulators, sharing and downloads, compliance reports and the breach register, over HTTP."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from portal.audit.ledger import LedgerEntry
from portal.container import Portal
from portal.db import utcnow
from portal.evidence.verify_pack import verify_pack
from tests.conftest import ORIGIN, FakeClock

# settings: the same fixture, without an erasure waiting period.
from tests.integration.test_evidence import PERIOD, Staff, _built, _completed_erasure, settings
from tests.support.accounts import post_form, register, token_of
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.pdf import is_tagged_pdf_ua

Client = TestClient[Litestar]
__all__ = ["settings"]


def _regulator(app: Litestar, portal: Portal, admin: Client, authority: str) -> tuple[str, Client]:
    """An admin registers the authority and invites its regulator, who enrols a passkey."""
    assert (
        post_form(
            admin, "/admin/regulators", {"authority": authority, "contact": "c@x.org", "case_reference": "R-1"}
        ).status_code
        == 200
    )
    recipient = next(r for r in portal.evidence.regulators() if r.authority == authority)
    email = f"{authority.split(maxsplit=1)[0].lower()}@regulator.example"
    page = post_form(admin, f"/admin/regulators/{recipient.id}/invite", {"email": email, "name": "Rita Regulator"})
    assert page.status_code == 200, page.text
    link = page.text.split('<code class="copyable">')[1].split("<")[0]
    client = TestClient(app, base_url=ORIGIN)
    token = token_of(link)
    assert (
        register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", SoftwareAuthenticator(ORIGIN)).status_code
        == 201
    )
    return recipient.id, client


def test_officer_shares_a_pack_and_only_that_regulator_downloads_it(
    app: Litestar, client: Client, portal: Portal
) -> None:
    staff = Staff(app, portal)
    request_id = _completed_erasure(client, portal, staff)
    admin = staff.member("ada", role="privacy_admin")
    dpa, dpa_client = _regulator(app, portal, admin, "National Data Protection Authority")
    _other, other_client = _regulator(app, portal, admin, "Other Authority")
    assert dpa_client.get("/staff", follow_redirects=False).headers["location"] == "/regulator"

    officer = staff.member("owen")  # not one of the approvers: no recent step-up
    built = post_form(officer, "/staff/evidence", {"scope": "request", "request_id": request_id, "recipient": dpa})
    assert built.status_code == 303
    pack_id = built.headers["location"].rsplit("/", 1)[1]
    _built(portal, pack_id)
    assert "SHA-256" in officer.get(f"/staff/evidence/{pack_id}").text

    refused = post_form(officer, f"/staff/evidence/{pack_id}/share", {"recipient": dpa, "days": "7"})
    assert refused.status_code == 400 and "confirm it is you" in refused.text
    staff.step_up("owen")
    assert post_form(officer, f"/staff/evidence/{pack_id}/share", {"recipient": dpa, "days": "7"}).status_code == 303

    assert pack_id[:8] in dpa_client.get("/regulator").text
    assert pack_id[:8] not in other_client.get("/regulator").text
    assert other_client.get(f"/regulator/packs/{pack_id}/download").status_code == 404
    assert dpa_client.get("/staff/evidence").status_code == 403

    download = dpa_client.get(f"/regulator/packs/{pack_id}/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert all(check.ok for check in verify_pack(download.content, fingerprint=portal.evidence.fingerprint()))
    with portal.db.read() as session:
        query = select(LedgerEntry.entry).where(LedgerEntry.action == "evidence.pack_downloaded")
        rows = [json.loads(entry) for entry in session.scalars(query)]
    assert [(r["object"], r["role"]) for r in rows] == [(f"pack:{pack_id}", "regulator")]
    assert portal.evidence.regulators()[0].last_checkpoint_size is not None  # the regulator is now a witness


def test_a_share_expires(app: Litestar, client: Client, portal: Portal) -> None:
    staff = Staff(app, portal)
    admin = staff.member("ada", role="privacy_admin")
    dpa, dpa_client = _regulator(app, portal, admin, "Expiring Authority")
    pack = portal.evidence.request_pack("period", PERIOD, recipient_id=dpa, actor="staff:t")
    _built(portal, pack.id)
    staff.step_up("ada")
    assert post_form(admin, f"/staff/evidence/{pack.id}/share", {"recipient": dpa, "days": "1"}).status_code == 303
    assert dpa_client.get(f"/regulator/packs/{pack.id}/download").status_code == 200
    portal.evidence.clock = FakeClock(utcnow() + timedelta(days=2))
    assert dpa_client.get(f"/regulator/packs/{pack.id}/download").status_code == 404


def test_reports_page_csv_and_processing_record(app: Litestar, client: Client, portal: Portal) -> None:
    staff = Staff(app, portal)
    _completed_erasure(client, portal, staff)
    admin = staff.member("ada", role="privacy_admin")
    page = admin.get("/admin/reports")
    assert page.status_code == 200 and "<svg" in page.text and "Requests received" in page.text
    rows = {
        row["metric"]: row["value"]
        for row in csv.DictReader(io.StringIO(admin.get("/admin/reports/dsar.csv").content.decode("utf-8-sig")))
    }
    assert rows["requests received"] == "1" and rows["requests completed"] == "1" and rows["late requests"] == "0"
    record = admin.get("/admin/reports/processing-record.json").json()
    assert record["legal_reference"] == "GDPR Art. 30(1)"
    assert {a["code"] for a in record["activities"][1:]} >= {"research-deidentified", "hie-sharing"}
    assert any(r["category"] == "billing" and r["years"] == 7 for r in record["retention"])
    pdf = admin.get("/admin/reports/processing-record.pdf")
    assert pdf.status_code == 200 and is_tagged_pdf_ua(pdf.content)
    assert staff.member("olivia").get("/admin/reports").status_code == 403


def test_breach_register_finds_affected_patients_and_they_see_the_notice(
    app: Litestar, client: Client, portal: Portal
) -> None:
    staff = Staff(app, portal)
    _completed_erasure(client, portal, staff)  # the patient has ledger entries from now
    admin = staff.member("ada", role="privacy_admin")
    now = utcnow()
    window = {
        "title": "Laptop stolen",
        "description": "An unencrypted export left on a laptop.",
        "discovered_at": f"{now:%Y-%m-%dT%H:%M}",
        "window_start": f"{now - timedelta(hours=1):%Y-%m-%dT%H:%M}",
        "window_end": f"{now + timedelta(minutes=1):%Y-%m-%dT%H:%M}",
    }
    created = post_form(admin, "/admin/breaches", window)
    assert created.status_code == 303, created.text
    breach_url = created.headers["location"]
    page = admin.get(breach_url).text
    assert "GDPR Art. 33" in page and "HIPAA 45 CFR 164.404" in page and "1 patient(s) possibly affected" in page
    assert "Important: a privacy incident" not in client.get("/patient").text
    assert (
        post_form(admin, f"{breach_url}/decision", {"status": "confirmed", "text": "Data was readable"}).status_code
        == 303
    )
    assert post_form(admin, f"{breach_url}/notification", {"text": "DPA told by phone"}).status_code == 303
    assert (
        post_form(admin, f"{breach_url}/notify-patients", {"text": "Your export may have been seen."}).status_code
        == 303
    )
    notice = client.get("/patient").text  # in the page itself: no JavaScript needed
    assert "Your export may have been seen." in notice
    assert "DPA told by phone" in admin.get(breach_url).text
