"""Consents and the access history in a real browser.

One patient, enrolled once for the module with a virtual platform authenticator, drives both
journeys.

Consent: nothing opt-in is pre-ticked; one click gives consent and one key press withdraws it (htmx
swaps the card and, out of band, the history in place, and focus stays on the card's button); a
second context without JavaScript posts the plain forms instead; the signed receipt verifies with the
key it carries, the PDF is a PDF, and the notice opens.

Access history: BALP AuditEvents arrive through the API; the patient reads them as sentences,
filters, pages, downloads them and questions one; a privacy officer (a device-bound passkey in a
separate context) asks for more, the patient replies, the officer closes the case and the patient
reads the finding.

Every page is checked with axe; no console errors, page errors or CSP violations anywhere.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from playwright.sync_api import Browser, Download, Page, expect

from tests.browser._flows import (
    Actor,
    Authenticators,
    assert_accessible,
    assert_clean,
    enrol_officer,
    enrol_patient,
    mark_document,
    open_context,
    same_document,
)
from tests.browser.conftest import LiveServer
from tests.support.balp import balp_event

pytestmark = pytest.mark.browser

OPT_IN = ("research-deidentified", "research-contact", "reminders", "insurer-sharing", "family-results")
OPT_OUT = ("hie-sharing",)
ROUTINE = 30  # St Example Hospital: more than one page of 25 on its own
LAB_CO = "Lab Co"
EMERGENCY_ORG = "City Emergency Hospital"
JONES = "Dr A. Jones, cardiologist at Ward 4, St Example Hospital viewed your lab results for your treatment"
EMERGENCY = (
    "Dr B. Smith, emergency physician at Emergency department, City Emergency Hospital viewed your lab results "
    "for emergency treatment — emergency access (unconscious on arrival)"
)
LAB = "Sam Patel, laboratory technician at Pathology, Lab Co viewed your lab results for your treatment"


@dataclass
class Patient(Actor):
    mrn: str
    patient_id: str


# ---------------------------------------------------------------------- helpers


def download(page: Page, link_name: str) -> tuple[Download, bytes]:
    with page.expect_download() as info:
        page.get_by_role("link", name=link_name, exact=True).first.click()
    path = info.value.path()
    return info.value, path.read_bytes()


def post_access_events(live_server: LiveServer, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Through the real API: an integration client, its bearer token, one NDJSON batch."""
    portal = live_server.portal
    client, secret = portal.api.create_client("Hospital EHR", ("access-events:write",), actor="staff:admin")
    token = portal.api.issue_tokens(client.id, secret).access_token
    response = httpx.post(
        live_server.origin + "/api/v1/access-events",
        content="\n".join(json.dumps(event) for event in events).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/x-ndjson"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------------- the patient


@pytest.fixture(scope="module")
def patient(live_server: LiveServer, browser: Browser) -> Iterator[Patient]:
    actor = open_context(browser)
    Authenticators(actor.context, actor.page).add()
    try:
        mrn = enrol_patient(actor, live_server, seed=701)
        patient_id = live_server.portal.records.find_by_mrn(mrn)
        assert patient_id is not None
        yield Patient(actor.context, actor.page, actor.problems, mrn, patient_id)
    finally:
        actor.context.close()


# ---------------------------------------------------------------------- consent


def test_consent_one_click_each_way_receipts_and_notices(
    live_server: LiveServer, browser: Browser, patient: Patient
) -> None:
    page, origin = patient.page, live_server.origin
    code = "research-deidentified"
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/consent/" in r.url else None)

    # Nothing opt-in is pre-ticked: every opt-in purpose says "Not given" and offers "Give consent".
    response = page.goto(origin + "/consent")
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Your consents")
    assert page.title().startswith("Your consents · ")
    assert page.locator("input:checked").count() == 0
    for opt_in in OPT_IN:
        card = page.locator(f"#purpose-{opt_in}")
        expect(card.locator("dd.status")).to_have_text("Not given")
        expect(card.get_by_role("button")).to_have_text(["Give consent"])
    for opt_out in OPT_OUT:
        expect(page.locator(f"#purpose-{opt_out} dd.status")).to_contain_text("On by default")
    history = page.locator("#consent-history")
    expect(history).to_contain_text("You have not changed any choice yet.")
    assert_accessible(page)

    # One click gives consent: the card and (out of band) the history change in place.
    mark_document(page)
    card = page.locator(f"#purpose-{code}")
    with page.expect_response(lambda r: r.url == f"{origin}/consent/{code}") as granted:
        card.get_by_role("button", name="Give consent").click()
    assert granted.value.status == 200 and granted.value.request.headers.get("hx-request") == "true"
    expect(card).to_contain_text("Consent given. Thank you.")
    # The card is swapped out, so the announcement goes to the page's lasting live region.
    expect(page.locator("#consent-status")).to_have_text(re.compile(r": Consent given\. Thank you\.$"))
    expect(card.locator("dd.status")).to_have_text("Consent given")
    expect(card.get_by_role("button")).to_have_text(["Withdraw consent"])
    expect(card.get_by_role("button", name="Withdraw consent")).to_be_focused()  # the keyboard user keeps their place
    rows = history.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Research with de-identified data")
    expect(rows.first.locator("td").nth(2)).to_have_text("Consent given")
    expect(rows.first).to_contain_text("You, in the portal")
    assert same_document(page), "the page was reloaded instead of swapped"

    # One key press (focus is already on the button) withdraws it, the same way.
    with page.expect_response(lambda r: r.url == f"{origin}/consent/{code}") as withdrawn:
        page.keyboard.press("Enter")
    assert withdrawn.value.status == 200
    expect(card).to_contain_text("Consent withdrawn. It applies from now on.")
    expect(page.locator("#consent-status")).to_have_text(re.compile(r": Consent withdrawn\. It applies from now on\.$"))
    expect(card.locator("dd.status")).to_have_text("Consent withdrawn")
    expect(card.get_by_role("button", name="Give consent")).to_be_focused()
    expect(rows).to_have_count(2)
    expect(rows.first.locator("td").nth(2)).to_have_text("Consent withdrawn")
    expect(rows.nth(1).locator("td").nth(2)).to_have_text("Consent given")
    assert same_document(page)
    assert posts == [f"{origin}/consent/{code}"] * 2, "one request per action"
    assert live_server.portal.consent.history(patient.patient_id)[0][0].event == "withdraw"
    assert_accessible(page)

    # The signed receipt (of the withdrawal, the newest row) verifies with the key it carries.
    receipt_file, raw = download(page, "Signed receipt (JSON)")
    assert re.fullmatch(r"consent-receipt-[\w-]+\.json", receipt_file.suggested_filename)
    document = json.loads(raw)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(document["publicKey"]))
    signed = jwt.decode(document["jws"], public, algorithms=["EdDSA"])
    assert signed == document["receipt"]
    assert jwt.get_unverified_header(document["jws"])["alg"] == "EdDSA"
    assert signed["piiPrincipalId"] == patient.patient_id
    assert signed["event"]["type"] == "withdraw" and signed["event"]["noticeVersion"] == 1
    assert signed["services"][0]["purposes"][0]["purposeCode"] == code
    assert signed["policyUrl"] == f"{origin}/consent/notices/{code}/1"
    tampered = document["jws"].rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(bytes(64)).decode().rstrip("=")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, public, algorithms=["EdDSA"])

    pdf_file, pdf = download(page, "PDF")
    assert pdf_file.suggested_filename.endswith(".pdf") and pdf.startswith(b"%PDF-")

    # The notice the patient agreed to.
    card.get_by_role("link", name="Read the full notice (version 1)").click()
    page.wait_for_url(f"{origin}/consent/notices/{code}/1")
    expect(page.get_by_role("heading", level=1)).to_have_text("Research with de-identified data")
    assert page.title().startswith("Research with de-identified data — notice version 1")
    notice = page.get_by_role("article")
    expect(notice).to_contain_text("Notice version 1, in effect from")
    expect(notice).to_contain_text("Researchers never receive information that identifies you.")
    expect(notice.locator("dd").last).to_have_text("Nothing happens unless you agree")
    assert_accessible(page)
    notice.get_by_role("link", name="Back to your consents").click()
    page.wait_for_url(origin + "/consent")
    assert_clean(page, patient.problems)

    # Without JavaScript the same buttons post plain forms; the page reloads and says so.
    plain = browser.new_context(java_script_enabled=False, storage_state=patient.context.storage_state())
    try:
        nojs = plain.new_page()
        nojs.set_default_timeout(10_000)
        nojs.goto(origin + "/consent")
        reminders = nojs.locator("#purpose-reminders")
        reminders.get_by_role("button", name="Give consent").click()
        nojs.wait_for_url(f"{origin}/consent?changed=reminders#purpose-reminders")
        expect(nojs.get_by_role("status").filter(has_text="Your choice was saved.")).to_be_visible()
        expect(reminders.locator("dd.status")).to_have_text("Consent given")
        expect(nojs.locator("#consent-history tbody tr").first).to_contain_text("Appointment reminders")
        reminders.get_by_role("button", name="Withdraw consent").click()
        nojs.wait_for_url(f"{origin}/consent?changed=reminders#purpose-reminders")
        expect(nojs.get_by_role("status").filter(has_text="Your choice was saved.")).to_be_visible()
        expect(reminders.locator("dd.status")).to_have_text("Consent withdrawn")
        expect(nojs.locator("#consent-history tbody tr")).to_have_count(4)
    finally:
        plain.close()
    events = [(e.event, p.code) for e, p, _n in live_server.portal.consent.history(patient.patient_id)]
    assert events == [("withdraw", "reminders"), ("grant", "reminders"), ("withdraw", code), ("grant", code)]


# ---------------------------------------------------------------------- access history and a case


def test_access_history_question_and_finding(live_server: LiveServer, browser: Browser, patient: Patient) -> None:
    page, origin = patient.page, live_server.origin
    today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    events = [
        balp_event(f"jones-{i}", patient.mrn, (today - timedelta(days=i + 2)).replace(hour=9)) for i in range(ROUTINE)
    ]
    events.append(
        balp_event(
            "btg-1",
            patient.mrn,
            (today - timedelta(days=1)).replace(hour=3),
            person="Dr B. Smith",
            role="Emergency physician",
            org=EMERGENCY_ORG,
            site="Emergency department",
            purpose="ETREAT",
            btg="unconscious on arrival",
        )
    )
    for i, days in enumerate((4, 20)):
        events.append(
            balp_event(
                f"lab-{i}",
                patient.mrn,
                (today - timedelta(days=days)).replace(hour=14),
                person="Sam Patel",
                role="Laboratory technician",
                org=LAB_CO,
                site="Pathology",
            )
        )
    total = len(events)
    result = post_access_events(live_server, events)
    assert (result["accepted"], result["duplicate"], result["rejected"]) == (total, 0, 0)

    # Plain-language sentences, the chart and its table.
    response = page.goto(origin + "/access")
    assert response is not None and response.status == 200
    assert page.title().startswith("Who accessed my record · ")
    expect(page.get_by_role("heading", level=1)).to_have_text("Who accessed your record")
    expect(page.get_by_role("status").first).to_contain_text(f"{total} accesses match.")
    timeline = page.locator("#access-rows")
    rows = timeline.locator("> tr")
    expect(rows).to_have_count(25 + 1)  # a page, then "Show older accesses"
    expect(rows.first.locator("td").nth(1)).to_have_text(EMERGENCY + " Emergency")
    expect(timeline.get_by_role("cell", name=JONES, exact=True).first).to_be_visible()
    expect(timeline.get_by_role("cell", name=LAB, exact=True).first).to_be_visible()
    chart = page.locator("svg.chart")
    expect(chart).to_be_visible()
    assert chart.get_attribute("aria-hidden") == "true"
    expect(chart.locator("path")).to_have_count(3)  # one stack of bars per organisation
    assert all(box is not None and box["height"] > 0 for box in (p.bounding_box() for p in chart.locator("path").all()))
    numbers = page.locator("details table")
    expect(numbers).to_be_hidden()
    page.get_by_text("The same numbers as a table").click()
    expect(numbers).to_be_visible()
    headers = numbers.locator("thead th").all_inner_texts()
    assert headers[0] == "Week" and sorted(headers[1:]) == sorted([EMERGENCY_ORG, LAB_CO, "St Example Hospital"])
    counts = [int(cell) for cell in numbers.locator("tbody td").all_inner_texts()]
    assert sum(counts) == total
    expect(page.get_by_role("heading", name="Alerts")).to_be_visible()
    expect(page.get_by_role("link", name="Your questions about accesses")).to_be_visible()
    assert_accessible(page)

    # Older accesses arrive in place (htmx).
    mark_document(page)
    more = page.get_by_role("link", name=f"Show older accesses ({total - 25} more)")
    with page.expect_response(lambda r: r.url.startswith(origin + "/access?page=2")) as older:
        more.click()
    assert older.value.request.headers.get("hx-request") == "true"
    expect(rows).to_have_count(total)
    expect(more).to_have_count(0)
    assert same_document(page)

    # The whole history as CSV.
    csv_file, raw = download(page, "CSV")
    assert csv_file.suggested_filename == "access-history.csv"
    table = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(table) == total
    assert {row["organisation"] for row in table} == {EMERGENCY_ORG, LAB_CO, "St Example Hospital"}
    assert [row["what_happened"] for row in table if row["emergency"] == "True"] == [EMERGENCY]

    # Filters are a plain GET form.
    page.get_by_label("Emergency accesses only").check()
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"/access\?.*emergency=1"))
    expect(page.get_by_role("status").first).to_contain_text("1 access matches.")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Emergency")
    expect(page.get_by_label("Emergency accesses only")).to_be_checked()
    page.get_by_role("link", name="Clear", exact=True).click()
    page.wait_for_url(origin + "/access")
    page.get_by_label("Organisation", exact=True).select_option(label=LAB_CO)
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"/access\?.*organisation=Lab\+Co"))
    expect(page.get_by_role("status").first).to_contain_text("2 accesses match.")
    expect(rows).to_have_count(2)
    for sentence in rows.locator("td:nth-child(2)").all_inner_texts():
        assert sentence == LAB

    # Question the newer Lab Co access.
    rows.first.get_by_role("link", name=re.compile(r"^Question the access of ")).click()
    page.wait_for_url(re.compile(r"/access/[^/]+/question$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Question this access")
    expect(page.locator(".panel")).to_contain_text(LAB)
    assert_accessible(page)
    page.get_by_label("Why do you question it?").fill("I have never been to Lab Co.")
    page.get_by_role("button", name="Send to the privacy office").click()
    page.wait_for_url(re.compile(r"/access/cases/[^/?]+$"))
    case_url = page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("Your question about an access")
    expect(page.locator(".panel")).to_contain_text("Status: Being looked into; answer due by")
    expect(page.locator("ol.messages > li")).to_have_count(1)
    expect(page.locator("ol.messages")).to_contain_text("I have never been to Lab Co.")
    assert_accessible(page)

    officer = open_context(browser)
    try:
        Authenticators(officer.context, officer.page).add()  # device-bound: staff may not use synced passkeys
        enrol_officer(officer, live_server)
        staff = officer.page

        # The queue, and the case with its surrounding accesses.
        staff.goto(origin + "/staff/cases")
        expect(staff.get_by_role("heading", level=1)).to_have_text("Questions about accesses")
        queue = staff.locator("tbody tr")
        expect(queue).to_have_count(1)
        expect(queue.first.locator("td").nth(1)).to_have_text("Open")
        expect(queue.first.locator("td").nth(2)).to_contain_text(re.compile(r"\((29|30) days left\)"))
        assert_accessible(staff)
        queue.first.get_by_role("link", name=re.compile(r"^Case opened ")).click()
        staff.wait_for_url(re.compile(r"/staff/cases/[^/?]+$"))
        expect(staff.get_by_role("heading", level=1)).to_have_text("Access case")
        expect(staff.locator(".panel").first).to_contain_text(LAB)
        expect(staff.locator("ol.messages")).to_contain_text("I have never been to Lab Co.")
        surrounding = staff.get_by_role("table").locator("tbody tr")
        expect(surrounding.filter(has_text=LAB)).to_have_count(1)
        assert_accessible(staff)

        # The officer asks for more; the patient replies.
        staff.get_by_label("Your question").fill("Which laboratory do you normally use?")
        staff.get_by_role("button", name="Send question").click()
        expect(staff.locator(".panel").first).to_contain_text("Status: awaiting patient")
        page.goto(case_url)
        expect(page.locator(".panel")).to_contain_text("Status: The privacy office asked you for more information")
        expect(page.locator("ol.messages > li").last).to_contain_text("Request for more information")
        expect(page.locator("ol.messages > li").last).to_contain_text("Which laboratory do you normally use?")
        page.get_by_label("Your reply").fill("Only the hospital's own laboratory.")
        page.get_by_role("button", name="Send reply").click()
        page.wait_for_url(case_url + "?sent=1")
        expect(page.get_by_role("status")).to_have_text("Your reply was sent.")
        expect(page.locator("ol.messages > li")).to_have_count(3)

        # The officer closes it with a finding and an explanation.
        staff.reload()
        expect(staff.locator("ol.messages")).to_contain_text("Only the hospital's own laboratory.")
        staff.get_by_label("The access was justified").check()
        staff.get_by_label("Explanation for the patient").fill(
            "Lab Co runs the hospital's blood tests under contract; Sam Patel processed your sample."
        )
        staff.get_by_role("button", name="Close the case").click()
        staff.wait_for_url(origin + "/staff/cases")
        expect(queue).to_have_text(["No cases."])
        staff.get_by_role("link", name="Include closed cases").click()
        staff.wait_for_url(origin + "/staff/cases?closed=true")
        expect(queue.first.locator("td").nth(1)).to_have_text("Closed")
        assert_accessible(staff)
        assert_clean(staff, officer.problems)
    finally:
        officer.context.close()

    # The patient reads the finding.
    page.goto(case_url)
    expect(page.locator(".panel")).to_contain_text("Status: The access was justified (answered ")
    finding = page.locator("ol.messages > li").last
    expect(finding).to_contain_text("Finding")
    expect(finding).to_contain_text("Lab Co runs the hospital's blood tests under contract")
    expect(page.get_by_label("Your reply")).to_have_count(0)
    expect(page.get_by_text("you can complain to the supervisory authority")).to_be_visible()
    assert_accessible(page)
    assert_clean(page, patient.problems)
