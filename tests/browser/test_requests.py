"""Export and erasure requests in a real browser (issue #7).

Patients and privacy officers each have their own browser context and virtual platform
authenticator; every passkey confirmation goes through the step-up dialog.

Export: the patient asks for everything; an officer approves; the patient's page, never reloaded,
follows the work by itself (htmx polling), shows the progress while the worker is held at its first
step, then offers the download; the ZIP's FHIR Bundle validates, its manifest's signature and hashes
check out. Erasure: two different officers must approve (the first cannot approve twice); the
erased categories' rows are gone and the signed deletion certificate verifies with the portal's key.
Denial: the patient reads the reason and how to complain. Accessibility: axe on every request page,
no CSP violations, and an export asked for with the keyboard alone.

This module's portal has no erasure waiting period, so erasures start once approved.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from playwright.sync_api import Browser, Locator, Page, Response, expect

from portal.dsar.export import Progress, Scope
from portal.dsar.signed import verify_bytes, verify_document
from portal.records.categories import BY_CODE
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from tests.browser._flows import (
    Actor,
    Authenticators,
    accept_invitation,
    assert_accessible,
    assert_clean,
    confirm_step_up,
    enrol_officer,
    mark_document,
    open_context,
    same_document,
)
from tests.browser.conftest import LiveServer, csp_violations, serve_portal
from tests.support.accounts import TODAY

pytestmark = pytest.mark.browser

REQUEST_PAGE = re.compile(r"/requests/[0-9a-f-]{36}$")
WAITING_FOR_REVIEW = "Status: Identity confirmed, waiting for review"
OLD_RECORD = date(2009, 6, 1)  # last treatment more than 10 years ago: the medical record may be erased
ERASED = ("demographics", "clinical", "medications", "documents", "billing")
ALREADY_APPROVED = "you have already approved this request; a second, different officer must approve it"


@dataclass
class Patient(Actor):
    patient_id: str


@dataclass
class Officer(Actor):
    name: str


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's own portal: no erasure waiting period, so an approved erasure starts at once."""
    with serve_portal(tmp_path_factory.mktemp("live") / "var", erasure_waiting_days=0) as server:
        yield server


@pytest.fixture(scope="module")
def officers(live_server: LiveServer, browser: Browser) -> Iterator[tuple[Officer, Officer]]:
    """Two privacy officers, each with a device-bound passkey in a separate context."""
    made: list[Officer] = []
    try:
        for email, name in (("olivia@example.org", "Olivia Officer"), ("oscar@example.org", "Oscar Officer")):
            actor = open_context(browser)
            made.append(Officer(actor.context, actor.page, actor.problems, name))
            Authenticators(actor.context, actor.page).add()
            enrol_officer(actor, live_server, email=email, name=name)
        yield made[0], made[1]
    finally:
        for officer in made:
            officer.context.close()


@pytest.fixture
def officer_pair(officers: tuple[Officer, Officer]) -> tuple[Officer, Officer]:
    """The officers, with what their pages complained about in earlier tests forgotten."""
    for officer in officers:
        officer.problems.console_errors.clear()
        officer.problems.page_errors.clear()
    return officers


@pytest.fixture
def enrol(live_server: LiveServer, browser: Browser) -> Iterator[Callable[..., Patient]]:
    """Imports a synthetic patient (records dated up to ``today``), invites and enrols them."""
    made: list[Patient] = []

    def make(seed: int, *, today: date = TODAY) -> Patient:
        bundle = generate_patient_bundle(seed, size="small", today=today)
        live_server.portal.records.import_bundle(bundle, actor="system:test")
        record = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        mrn = str(next(i["value"] for i in record["identifier"] if i["system"] == MRN_SYSTEM))
        patient_id = live_server.portal.records.find_by_mrn(mrn)
        assert patient_id is not None
        actor = open_context(browser)
        made.append(Patient(actor.context, actor.page, actor.problems, patient_id))
        Authenticators(actor.context, actor.page).add()
        link = live_server.portal.accounts.invite_patient(mrn, actor="system:test")
        accept_invitation(actor, link, record["birthDate"])
        return made[-1]

    try:
        yield make
    finally:
        for patient in made:
            patient.context.close()


# ---------------------------------------------------------------------- helpers


def check_page(page: Page) -> None:
    """axe finds nothing, and this document recorded no CSP violation."""
    assert_accessible(page)
    assert csp_violations(page) == []


def heading(page: Page) -> Locator:
    return page.get_by_role("heading", level=1)


def open_requests(page: Page, origin: str) -> None:
    page.get_by_role("link", name="My data requests").click()
    page.wait_for_url(origin + "/requests")
    expect(heading(page)).to_have_text("Your data requests")


def open_in_queue(officer: Officer, origin: str, request_id: str, kind: str) -> list[str]:
    """From the nav, through the queue, to the request's staff page; returns its queue row's cells."""
    staff = officer.page
    staff.get_by_role("link", name="Data requests").click()
    staff.wait_for_url(origin + "/staff/requests")
    expect(heading(staff)).to_have_text("Data requests")
    link = staff.get_by_role("link", name=f"{kind} request {request_id[:8]}", exact=True)
    row = staff.locator("tbody tr").filter(has=link)
    expect(row).to_have_count(1)
    cells = row.locator("td").all_inner_texts()
    link.click()
    staff.wait_for_url(f"{origin}/staff/requests/{request_id}")
    expect(heading(staff)).to_have_text(f"{kind} request {request_id[:8]}")
    return cells


def approve(officer: Officer) -> None:
    officer.page.get_by_role("button", name="Confirm with passkey and approve").click()
    confirm_step_up(officer.page)


def approvals(page: Page) -> Locator:
    return page.get_by_role("region", name="Approvals").get_by_role("listitem")


def status_panel(page: Page) -> Locator:
    return page.locator("#request-status")


def watch_polls(page: Page, origin: str, request_id: str) -> list[Response]:
    """Every htmx request for the status block, as it arrives."""
    polls: list[Response] = []
    url = f"{origin}/requests/{request_id}/status"
    page.on("response", lambda r: polls.append(r) if r.url == url else None)
    return polls


# ---------------------------------------------------------------------- export


def test_export_approved_followed_live_and_downloaded(
    live_server: LiveServer,
    officer_pair: tuple[Officer, Officer],
    enrol: Callable[..., Patient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin, portal = live_server.origin, live_server.portal
    officer = officer_pair[0]
    patient = enrol(801)
    page = patient.page

    # The worker reports its first step, then waits until the test has seen it in the browser.
    release, started = threading.Event(), threading.Event()
    build = portal.requests.exporter.build

    def held_build(request_id: str, patient_id: str, scope: Scope, progress: Progress) -> Any:
        def report(percent: int, note: str) -> None:
            progress(percent, note)
            if not started.is_set():
                started.set()
                release.wait(timeout=30)

        return build(request_id, patient_id, scope, report)

    monkeypatch.setattr(portal.requests.exporter, "build", held_build)

    try:
        # The patient asks for everything.
        open_requests(page, origin)
        expect(page.locator("tbody tr")).to_have_text(["You have not made any requests yet."])
        page.get_by_role("link", name="Get a copy of my data").click()
        page.wait_for_url(origin + "/requests/new/export")
        expect(heading(page)).to_have_text("Get a copy of your data")
        expect(page.get_by_label("Everything we hold about you")).to_be_checked()
        page.get_by_role("button", name="Confirm with passkey and request my data").click()
        confirm_step_up(page)
        page.wait_for_url(REQUEST_PAGE)
        request_id = page.url.rsplit("/", 1)[1]
        expect(heading(page)).to_have_text("Copy of your data")
        status = status_panel(page)
        expect(status).to_contain_text(WAITING_FOR_REVIEW)
        assert portal.requests.view(request_id).request.scope == Scope().to_json()
        mark_document(page)
        polls = watch_polls(page, origin, request_id)

        # An officer finds it in the queue and approves it with a passkey.
        cells = open_in_queue(officer, origin, request_id, "Export")
        assert cells[1:3] == ["Export", "Identity confirmed, waiting for review"]
        assert re.fullmatch(r"\d\d \w{3} \d{4} \((29|30) days left\)", cells[3]), cells
        staff = officer.page
        expect(staff.get_by_role("region", name="Identity verification")).to_contain_text(
            "The patient confirmed it was them with a passkey (WebAuthn assertion, user verified)"
        )
        expect(staff.locator(".panel").first).to_contain_text("Scope: all categories")
        expect(approvals(staff)).to_have_text(["None yet."])
        approve(officer)
        expect(approvals(staff)).to_have_text([re.compile(rf"^{officer.name} on .+ UTC \(you\)$")])
        expect(staff.locator(".panel").first).to_contain_text(re.compile(r"Status: (Approved|Being carried out)"))
        expect(staff.get_by_role("button", name="Confirm with passkey and approve")).to_have_count(0)

        # The patient's page follows by itself: the progress while the worker is held, then the download.
        assert started.wait(timeout=20), "the export job did not start"
        expect(status).to_contain_text("Status: Being carried out", timeout=10_000)
        progress = status.get_by_role("progressbar", name="Collecting your records")
        expect(progress).to_have_attribute("value", "10")
        check_page(page)
        release.set()
        expect(status).to_contain_text("Your export is ready", timeout=20_000)
        expect(status).to_contain_text("Status: Completed")
        assert same_document(page), "the page was reloaded instead of updating itself"
        assert len(polls) >= 2 and all(p.request.headers.get("hx-request") == "true" for p in polls)
        assert status.get_attribute("hx-get") is None, "polling goes on after the export is ready"
        check_page(page)

        # Downloading needs a fresh passkey confirmation too.
        status.get_by_role("button", name="Confirm with passkey and download").click()
        with page.expect_download() as info:
            confirm_step_up(page)
        assert re.fullmatch(r"my-health-data-\d{4}-\d{2}-\d{2}\.zip", info.value.suggested_filename)
        raw = info.value.path().read_bytes()
    finally:
        release.set()

    archive = portal.requests.view(request_id).archive
    assert archive is not None and archive.downloads == 1 and archive.sha256 == hashlib.sha256(raw).hexdigest()
    check_export_zip(raw, live_server, request_id, patient.patient_id)
    assert same_document(page)
    assert_clean(page, patient.problems)
    assert_clean(staff, officer.problems)


def check_export_zip(raw: bytes, live_server: LiveServer, request_id: str, patient_id: str) -> None:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    signed_parts = {"manifest.json", "manifest.json.jws"}
    assert {"fhir/bundle.json", "summary.pdf", "public-key.pem", "README.txt", *signed_parts} <= set(files)
    assert any(name.startswith("csv/") for name in files)

    # The FHIR Bundle is valid FHIR: a collection of the record, named after the request.
    bundle = get_fhir_model_class("Bundle").model_validate(json.loads(files["fhir/bundle.json"]))
    assert isinstance(bundle, Bundle) and bundle.entry is not None
    assert bundle.type == "collection" and bundle.id == request_id
    resources = [entry.resource for entry in bundle.entry]
    types = {resource.get_resource_type() for resource in resources if resource is not None}
    assert None not in resources and {"Patient", "Encounter", "Provenance"} <= types
    assert files["summary.pdf"].startswith(b"%PDF-")

    # The manifest's signature verifies with the enclosed key, which is the portal's own.
    public = load_pem_public_key(files["public-key.pem"])
    assert isinstance(public, Ed25519PublicKey)
    portal_key = live_server.portal.keys.signing_key().public_key()
    assert public.public_bytes_raw() == portal_key.public_bytes_raw()
    token = files["manifest.json.jws"].decode()
    verify_bytes(token, files["manifest.json"], public)
    with pytest.raises(ValueError, match="differs"):
        verify_bytes(token, files["manifest.json"].replace(b'"bytes"', b'"Bytes"'), public)

    # Every file but the manifest and its signature is listed, with the right hash and size.
    manifest = json.loads(files["manifest.json"])
    assert (manifest["request"], manifest["subject"]) == (request_id, patient_id)
    assert set(manifest["files"]) == set(files) - signed_parts
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert entry["bytes"] == len(files[name]), name


# ---------------------------------------------------------------------- erasure


def test_erasure_needs_two_different_officers_and_leaves_a_signed_certificate(
    live_server: LiveServer, officer_pair: tuple[Officer, Officer], enrol: Callable[..., Patient]
) -> None:
    origin, portal = live_server.origin, live_server.portal
    first, second = officer_pair
    patient = enrol(812, today=OLD_RECORD)
    page = patient.page

    # Once given, a consent must be kept as proof for 6 years, so the plan has something to keep.
    page.goto(origin + "/consent")
    card = page.locator("#purpose-research-deidentified")
    card.get_by_role("button", name="Give consent").click()
    expect(card.locator("dd.status")).to_have_text("Consent given")

    # The plan, category by category; the patient confirms they understand and asks.
    open_requests(page, origin)
    page.get_by_role("link", name="Ask us to erase my data").click()
    page.wait_for_url(origin + "/requests/new/erasure")
    expect(heading(page)).to_have_text("Ask us to erase your data")
    plan = page.get_by_role("table", name="What happens to each category")

    def outcome(code: str) -> Locator:
        return plan.locator("tbody tr").filter(has=page.get_by_role("cell", name=BY_CODE[code].title, exact=True))

    for code in ERASED:
        expect(outcome(code).locator("td").nth(2)).to_have_text("Erased")
    kept_until = datetime.now(UTC).year + 6
    expect(outcome("consent").locator("td").nth(2)).to_have_text(
        re.compile(rf"^Kept until \d\d \w{{3}} {kept_until}, then erased$")
    )
    expect(outcome("consent").locator("td").nth(3)).to_contain_text("GDPR Art. 7(1)")
    expect(outcome("wellness").locator("td").nth(2)).to_have_text("Nothing held")
    before = portal.requests.eraser.inventory(patient.patient_id)
    assert all(sum(before[code].values()) > 0 for code in ERASED), before
    page.get_by_label("I understand what will be erased and what must be kept").check()
    page.get_by_role("button", name="Confirm with passkey and ask for erasure").click()
    confirm_step_up(page)
    page.wait_for_url(REQUEST_PAGE)
    request_id = page.url.rsplit("/", 1)[1]
    expect(heading(page)).to_have_text("Erasure of your data")
    status = status_panel(page)
    expect(status).to_contain_text(WAITING_FOR_REVIEW)
    mark_document(page)

    # The first officer approves: still in review, one approval.
    open_in_queue(first, origin, request_id, "Erasure")
    staff = first.page
    expect(staff.get_by_role("region", name="Erasure plan")).to_contain_text(BY_CODE["consent"].title)
    expect(approvals(staff)).to_have_text(["None yet."])
    approve(first)
    expect(approvals(staff)).to_have_text([re.compile(rf"^{first.name} on .+ UTC \(you\)$")])
    expect(staff.locator(".panel").first).to_contain_text("Status: In review")

    # The same officer cannot give the second approval.
    approve(first)
    expect(staff.get_by_role("alert").filter(has_text=ALREADY_APPROVED)).to_be_visible()
    expect(approvals(staff)).to_have_count(1)
    assert portal.requests.view(request_id).request.status == "in_review"

    # A second, different officer can.
    open_in_queue(second, origin, request_id, "Erasure")
    other = second.page
    expect(approvals(other)).to_have_text([re.compile(rf"^{first.name} on .+ UTC$")])
    approve(second)
    expect(approvals(other)).to_have_count(2)
    expect(approvals(other).last).to_have_text(re.compile(rf"^{second.name} on .+ UTC \(you\)$"))

    # The patient's page shows the certificate once the erasure is done, without a reload.
    json_link = status.get_by_role("link", name="signed JSON")
    expect(json_link).to_be_visible(timeout=20_000)
    expect(status).to_contain_text("Status: Completed, some data kept by law")
    assert same_document(page)
    check_page(page)

    # The rows of the erased categories are gone, their keys destroyed; the consent proof is kept.
    after = portal.requests.eraser.inventory(patient.patient_id)
    for code in ERASED:
        assert sum(after[code].values()) == 0, (code, after[code])
    assert after["consent"] == before["consent"] and sum(after["consent"].values()) > 0
    keys = portal.keys.categories_with_keys(patient.patient_id)
    assert not any(keys.get(code) for code in ERASED), keys

    # The signed JSON certificate verifies with the portal's key and says what happened.
    href = json_link.get_attribute("href")
    assert href == f"/requests/{request_id}/certificate/json"
    response = page.request.get(origin + href)
    assert response.ok and response.headers["content-disposition"].startswith("attachment;")
    signed = response.json()
    document = verify_document(signed, portal.keys.signing_key().public_key())
    assert (document["request"], document["subject"]) == (request_id, patient.patient_id)
    assert sorted(item["category"] for item in document["erased"]) == sorted(ERASED)
    assert [item["category"] for item in document["retained"]] == ["consent"]
    assert document["retained"][0]["retain_until"].startswith(str(kept_until))
    assert [a["name"] for a in document["approved_by"]] == [first.name, second.name]
    assert document["verification"]["passed"] is True
    tampered = {**signed, "document": {**document, "erased": []}}
    with pytest.raises(ValueError, match="differs"):
        verify_document(tampered, portal.keys.signing_key().public_key())

    with page.expect_download() as info:
        status.get_by_role("link", name="PDF").click()
    assert info.value.suggested_filename == f"deletion-certificate-{request_id[:8]}.pdf"
    assert info.value.path().read_bytes().startswith(b"%PDF-")

    # After a reload the page lists what was done.
    page.reload()
    done = page.get_by_role("region", name="What was done")
    expect(done).to_contain_text(f"{BY_CODE['clinical'].title}: erased")
    expect(done).to_contain_text(re.compile(rf"{BY_CODE['consent'].title}: kept until \d\d \w{{3}} {kept_until}"))
    check_page(page)
    assert_clean(page, patient.problems)
    assert_clean(other, second.problems)
    assert_clean(staff, first.problems, expected_failures=1)  # the refused second approval (400)


# ---------------------------------------------------------------------- denial


def test_declined_request_shows_the_reason_and_how_to_complain(
    live_server: LiveServer, officer_pair: tuple[Officer, Officer], enrol: Callable[..., Patient]
) -> None:
    origin = live_server.origin
    officer = officer_pair[1]
    patient = enrol(823)
    page = patient.page
    reason = "We could not match the request to the records we hold; please contact the privacy office."

    page.goto(origin + "/requests/new/export")
    page.get_by_role("button", name="Confirm with passkey and request my data").click()
    confirm_step_up(page)
    page.wait_for_url(REQUEST_PAGE)
    request_id = page.url.rsplit("/", 1)[1]
    status = status_panel(page)
    expect(status).to_contain_text(WAITING_FOR_REVIEW)

    open_in_queue(officer, origin, request_id, "Export")
    staff = officer.page
    staff.get_by_label("Reason for declining (the patient sees it, with how to complain)").fill(reason)
    staff.get_by_role("button", name="Decline").click()
    expect(staff.locator(".panel").first).to_contain_text("Status: Declined")
    expect(staff.get_by_role("region", name="Decide")).to_have_count(0)
    expect(staff.get_by_role("region", name="Timeline")).to_contain_text(reason)

    # The open page says so by itself; the list and the request page give the reason and the way to complain.
    expect(status).to_contain_text("Status: Declined", timeout=10_000)
    open_requests(page, origin)
    row = page.locator("tbody tr").filter(has=page.get_by_role("link", name="Copy of my data"))
    expect(row.locator("td").nth(2)).to_have_text("Declined")
    row.get_by_role("link", name="Copy of my data").click()
    page.wait_for_url(f"{origin}/requests/{request_id}")
    expect(page.get_by_text("We declined this request.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"you can complain to a supervisory authority"))).to_be_visible()
    last = page.get_by_role("region", name="Timeline and messages").get_by_role("listitem").last
    expect(last).to_contain_text(f"Declined: {reason}")
    expect(last.locator("q")).to_have_text(reason)
    expect(page.get_by_role("button", name="Cancel this request")).to_have_count(0)
    check_page(page)
    assert_clean(page, patient.problems)
    assert_clean(staff, officer.problems)


# ---------------------------------------------------------------------- accessibility and the keyboard


def focused_id(page: Page) -> str:
    return str(page.evaluate("document.activeElement ? document.activeElement.id : ''"))


def tab_until(page: Page, reached: Callable[[], bool], *, limit: int = 60) -> None:
    for _ in range(limit):
        if reached():
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"never reached by Tab; focus is on #{focused_id(page)}")


def test_request_pages_are_accessible_and_the_export_form_works_by_keyboard(
    live_server: LiveServer, officer_pair: tuple[Officer, Officer], enrol: Callable[..., Patient]
) -> None:
    origin, portal = live_server.origin, live_server.portal
    officer = officer_pair[0]
    patient = enrol(834)
    page = patient.page

    page.goto(origin + "/requests")
    check_page(page)
    page.goto(origin + "/requests/new/erasure")
    expect(heading(page)).to_have_text("Ask us to erase your data")
    check_page(page)

    # Keyboard only: Tab to the choice, arrow to "only some", tick two boxes with Space, Enter to send.
    page.goto(origin + "/requests/new/export")
    check_page(page)
    tab_until(page, lambda: focused_id(page) == "scope-all")
    page.keyboard.press("ArrowDown")
    assert focused_id(page) == "scope-some"
    expect(page.get_by_label("Only the categories I tick below")).to_be_checked()
    page.keyboard.press("Tab")
    assert focused_id(page) == "cat-demographics"
    page.keyboard.press("Tab")
    assert focused_id(page) == "cat-clinical"
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    assert focused_id(page) == "cat-medications"
    expect(page.locator("input[name=categories]:checked")).to_have_count(2)
    submit = page.get_by_role("button", name="Confirm with passkey and request my data")
    tab_until(page, lambda: bool(submit.evaluate("button => button === document.activeElement")))
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Confirm it is you")).to_be_visible()
    assert focused_id(page) == "stepup-confirm"
    page.keyboard.press("Enter")
    page.wait_for_url(REQUEST_PAGE)
    request_id = page.url.rsplit("/", 1)[1]
    scope = portal.requests.view(request_id).request.scope
    assert scope["categories"] == ["clinical", "medications"]
    expect(status_panel(page)).to_contain_text(WAITING_FOR_REVIEW)
    check_page(page)
    page.goto(origin + "/requests")
    expect(page.locator("tbody tr")).to_have_count(1)
    check_page(page)

    staff = officer.page
    open_in_queue(officer, origin, request_id, "Export")
    expect(staff.locator(".panel").first).to_contain_text("Scope: clinical, medications")
    check_page(staff)
    staff.goto(origin + "/staff/requests")
    check_page(staff)
    assert_clean(page, patient.problems)
    assert_clean(staff, officer.problems)
