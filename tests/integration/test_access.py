"""Access history: BALP AuditEvents in through the API, portal reads recorded automatically, the timeline."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from portal.access import service as access_service
from portal.access.models import AccessEvent, AccessLogVersion
from portal.access.reading import MIN_LINES_TO_SHARE
from portal.access.service import MAX_BATCH, AccessLog, TimelineFilter
from portal.container import Portal
from tests.conftest import ORIGIN
from tests.support.accounts import enrol_patient, new_patient
from tests.support.aio import run_async
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.balp import balp_event
from tests.support.concurrency import overlapping

Client = TestClient[Litestar]


def _token(portal: Portal) -> str:
    import uuid

    row, secret = portal.api.create_client(f"EHR {uuid.uuid4().hex[:6]}", ("access-events:write",), actor="staff:admin")
    return portal.api.issue_tokens(row.id, secret).access_token


def _post(client: Client, token: str, body: str, content_type: str = "application/x-ndjson") -> Any:
    return client.post(
        "/api/v1/access-events",
        content=body.encode(),
        headers={"authorization": f"Bearer {token}", "content-type": content_type},
    )


def test_ndjson_batch_reports_each_line_and_keeps_good_ones(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    lines = [
        json.dumps(balp_event("e1", mrn)),
        "{not json",
        json.dumps(balp_event("e2", "MRN-UNKNOWN")),
        json.dumps({**balp_event("e3", mrn), "recorded": "yesterday"}),
        json.dumps(balp_event("e4", mrn, subtype="search-type", purpose="HOPERAT")),
        json.dumps(balp_event("e1", mrn)),
    ]
    token = _token(portal)
    response = _post(client, token, "\n".join(lines))
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 1, 3)
    statuses = [(line["line"], line["status"]) for line in body["lines"]]
    assert statuses == [
        (1, "accepted"),
        (2, "rejected"),
        (3, "rejected"),
        (4, "rejected"),
        (5, "accepted"),
        (6, "duplicate"),
    ]
    reasons = {line["line"]: line["reason"] for line in body["lines"]}
    assert reasons[2] == "the line is not JSON" and "no patient" in reasons[3] and "recorded" in reasons[4]
    again = _post(client, token, json.dumps(balp_event("e1", mrn)), "application/fhir+json")
    assert again.json()["duplicate"] == 1, "idempotent by event id"
    with portal.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AccessEvent)) == 2


def test_a_big_batch_read_with_the_helper_reports_every_line_where_it_was(client: Client, portal: Portal) -> None:
    """A batch big enough to be read half in the helper process: blank lines skipped, bad lines in both
    halves reported at their own line numbers, every good line stored once."""
    mrn, _ = new_patient(portal)
    token = _token(portal)
    size = 2 * MIN_LINES_TO_SHARE

    def batch(prefix: str) -> list[str]:
        lines = [json.dumps(balp_event(f"{prefix}-{n}", mrn)) for n in range(size)]
        lines[3], lines[size - 2] = "{not json", json.dumps(balp_event(f"{prefix}-x", "MRN-UNKNOWN"))
        lines.insert(10, "")
        return lines

    deadline = time.monotonic() + 30
    while portal.access.reader._ready_helper() is None:  # the first big batch starts it
        _post(client, token, "\n".join(batch(f"warm{time.monotonic_ns()}")))
        assert time.monotonic() < deadline, "the reading helper never became ready"
        time.sleep(0.1)
    before = _stored_accesses(portal)
    body = _post(client, token, "\n".join(batch("big"))).json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (size - 2, 0, 2)
    rejected = {line["line"]: line["reason"] for line in body["lines"] if line["status"] == "rejected"}
    assert rejected == {4: "the line is not JSON", size: "no patient here has that identifier"}
    assert [line["line"] for line in body["lines"]] == [n for n in range(1, size + 2) if n != 11]
    assert _stored_accesses(portal) == before + size - 2


def test_a_batch_over_the_limit_is_refused_whole(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    line = json.dumps(balp_event("same", mrn))
    response = _post(client, _token(portal), "\n".join([line] * (MAX_BATCH + 1)))
    assert response.status_code == 413
    assert _stored_accesses(portal) == 0
    with pytest.raises(ValueError, match="at most"):
        portal.access.ingest_lines([line.encode()] * (MAX_BATCH + 1), sender="integration:ehr")


def _stored_accesses(portal: Portal) -> int:
    with portal.db.read() as session:
        return session.scalar(select(func.count()).select_from(AccessEvent)) or 0


def test_a_batch_that_fails_while_its_rows_are_streamed_stores_nothing(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the rows go out through COPY while the batch is still being read; an error on the
    third row, after two were sent, must leave neither rows nor ledger entries."""
    mrn, _ = new_patient(portal)
    made = itertools.count(1)
    real_row = access_service._access_row

    def third_row_fails(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if next(made) == 3:
            raise RuntimeError("the process fails mid-batch")
        return real_row(*args, **kwargs)

    monkeypatch.setattr(access_service, "_access_row", third_row_fails)
    ledger_size = portal.ledger.size()
    with pytest.raises(RuntimeError, match="mid-batch"):
        portal.access.ingest([balp_event(f"s{i}", mrn) for i in range(5)], sender="integration:ehr")
    assert _stored_accesses(portal) == 0
    assert portal.ledger.size() == ledger_size


def test_a_row_the_database_refuses_mid_batch_fails_the_whole_batch(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database's own refusal (two rows with one id) reaches the caller as SQLAlchemy's IntegrityError,
    on both backends, and nothing of the batch stays."""
    mrn, _ = new_patient(portal)
    monkeypatch.setattr(access_service, "new_id", lambda: "00000000-0000-4000-8000-000000000001")
    ledger_size = portal.ledger.size()
    with pytest.raises(IntegrityError):
        portal.access.ingest([balp_event(f"d{i}", mrn) for i in range(3)], sender="integration:ehr")
    assert _stored_accesses(portal) == 0
    assert portal.ledger.size() == ledger_size


def test_events_another_batch_stored_after_the_look_up_come_back_as_duplicates(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look-up of known events misses those a concurrent batch commits just after it: the insert
    collides with them, and the batch is stored again, finding them. Any other refusal still fails it."""
    mrn, _ = new_patient(portal)
    stored = [balp_event(f"raced-{i}", mrn) for i in range(3)]
    portal.access.ingest(stored, sender="integration:ehr")
    ledger_size = portal.ledger.size()
    real_new_rows = access_service._NewRows
    looked_up = itertools.count()

    def first_look_up_misses(*args: Any, known: set[str], **kwargs: Any) -> Any:
        return real_new_rows(*args, known=set() if next(looked_up) == 0 else known, **kwargs)

    monkeypatch.setattr(access_service, "_NewRows", first_look_up_misses)
    result = portal.access.ingest([*stored, balp_event("raced-new", mrn)], sender="integration:ehr")
    assert [line.status for line in result.lines] == ["duplicate"] * 3 + ["accepted"]
    assert next(looked_up) == 2, "stored twice: once colliding, once finding them"
    assert _stored_accesses(portal) == 4
    assert portal.ledger.size() == ledger_size + 1


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_the_same_events_sent_twice_at_once_are_stored_once(portal: Portal) -> None:
    """An integration engine that gave up waiting resends its batch while the first is still being stored.
    The second's look-up of known events runs before the first commits and finds none; its insert then
    waits on the first's rows, and collides with them once they commit. It must answer "duplicate" for
    them, not fail. (On SQLite a batch takes the write lock before its look-up: the two cannot overlap.)"""
    mrn, _ = new_patient(portal)
    events = [balp_event(f"twice-{i}", mrn) for i in range(5)]
    ledger_size = portal.ledger.size()
    first, second = overlapping(
        portal,
        lambda: portal.access.ingest(events, sender="integration:ehr"),
        lambda: portal.access.ingest(events, sender="integration:ehr"),
    )
    assert [line.status for line in first.result().lines] == ["accepted"] * 5
    assert [line.status for line in second.result().lines] == ["duplicate"] * 5
    assert _stored_accesses(portal) == 5
    assert portal.ledger.size() == ledger_size + 5
    assert portal.ledger.verify().ok


def _rows_shown(page: str) -> int:
    return page.count('/question"><span') + page.count('/question">Question')


def test_all_bad_batch_is_422_and_stores_nothing(client: Client, portal: Portal) -> None:
    response = _post(client, _token(portal), '{"resourceType": "Patient"}')
    assert response.status_code == 422 and response.json()["rejected"] == 1


def test_scope_is_required(client: Client, portal: Portal) -> None:
    row, secret = portal.api.create_client("Other", ("consent:read",), actor="staff:admin")
    token = portal.api.issue_tokens(row.id, secret).access_token
    assert _post(client, token, "{}").status_code == 403


def test_stored_details_are_encrypted(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    _post(client, _token(portal), json.dumps(balp_event("x1", mrn, person="Dr Zebulon Canary")))
    with portal.db.read() as session:
        body = session.scalars(select(AccessEvent.body)).one()
    assert b"Zebulon" not in body and b"Ward 4" not in body


def test_patient_sees_plain_language_timeline_with_filters(client: Client, portal: Portal) -> None:
    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    token = _token(portal)
    events = [balp_event(f"t{i}", mrn, recorded=f"2026-10-{i + 1:02d}T09:00:00Z") for i in range(30)]
    events.append(
        balp_event(
            "btg",
            mrn,
            purpose="ETREAT",
            btg="unconscious on arrival",
            org="City Emergency Hospital",
            recorded="2026-10-31T03:00:00Z",
        )
    )
    _post(client, token, "\n".join(json.dumps(e) for e in events))
    page = client.get("/access")
    assert page.status_code == 200
    assert (
        "Dr A. Jones, cardiologist at Ward 4, St Example Hospital viewed your lab results for your treatment"
        in page.text
    )
    assert "emergency access (unconscious on arrival)" in page.text
    assert "Show older accesses" in page.text and "<svg" in page.text
    emergency = client.get("/access", params={"emergency": "1"})
    assert emergency.text.count('<strong class="tag">Emergency</strong>') == 1
    org = client.get("/access", params={"organisation": "City Emergency Hospital"})
    assert "1 access matches" in org.text
    assert _rows_shown(org.text) == 1 and "City Emergency Hospital" in org.text
    # Every filter of the page's own statement, served (on PostgreSQL, by the event loop's pool).
    window = client.get("/access", params={"from": "2026-10-03", "to": "2026-10-05", "who": "person"})
    assert _rows_shown(window.text) == 3 and "3 accesses match" in window.text
    purpose = client.get("/access", params={"purpose": "ETREAT", "role": "cardiologist", "action": "read"})
    assert _rows_shown(purpose.text) == 1 and "unconscious on arrival" in purpose.text
    more = client.get("/access", params={"page": "2"}, headers={"hx-request": "true"})
    assert more.text.lstrip().startswith('<tbody id="access-rows">') and more.text.count("<tr") >= 6
    pdf = client.get("/access/history.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    csv_text = client.get("/access/history.csv").text
    assert csv_text.count("\n") == 32 and "City Emergency Hospital" in csv_text
    ndjson = client.get("/access/history.ndjson").text.strip().splitlines()
    from fhir.resources.R4B.auditevent import AuditEvent

    assert len(ndjson) == 31
    for line in ndjson:
        AuditEvent.model_validate(json.loads(line))


def test_portal_staff_reads_appear_automatically(client: Client, portal: Portal) -> None:
    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    portal.accounts.create_staff("o@example.org", "privacy_officer", "Olivia Officer", actor="system:test")
    officer = portal.accounts.staff_accounts()[0]
    portal.records.read(
        patient_id, actor=f"staff:{officer.id}", role="privacy officer", purpose="PATRQT", categories=["clinical"]
    )
    entries, total = run_async(portal.access.timeline, patient_id, TimelineFilter())
    assert total == 1
    assert entries[0].sentence == (
        "Olivia Officer, privacy officer at Privacy office, Privacy portal viewed your clinical record "
        "because you asked"
    )
    portal.access.staff_named = False
    entries, _ = run_async(portal.access.timeline, patient_id, TimelineFilter())
    assert entries[0].sentence.startswith("A member of the privacy office (privacy officer)")


def test_erased_access_log_reads_as_erased(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    _post(client, _token(portal), json.dumps(balp_event("z1", mrn)))
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    portal.keys.destroy(patient_id, "access_log", reason="test")
    portal.keys._cache.clear()
    entries, _ = run_async(portal.access.timeline, patient_id, TimelineFilter())
    assert entries[0].details is None and "erased" in entries[0].sentence


@pytest.mark.parametrize("missing", ["id", "agent", "source"])
def test_incomplete_events_are_refused_with_the_reason(client: Client, portal: Portal, missing: str) -> None:
    mrn, _ = new_patient(portal)
    event = balp_event("m1", mrn)
    event.pop(missing)
    body = _post(client, _token(portal), json.dumps(event), "application/json").json()
    assert body["rejected"] == 1 and body["lines"][0]["reason"]


def _patient_with_events(client: Client, portal: Portal, events: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """An enrolled, signed-in patient with some ingested accesses; returns (MRN, patient id)."""
    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    token = _token(portal)
    body = "\n".join(json.dumps(e) for e in (events or [balp_event("c1", mrn), balp_event("c2", mrn, org="Lab Co")]))
    assert _post(client, token, body).status_code == 200
    return mrn, patient_id


def test_question_an_access_and_read_the_finding(client: Client, portal: Portal, app: Litestar) -> None:
    from tests.conftest import sign_in
    from tests.support.accounts import post_form

    _mrn, patient_id = _patient_with_events(client, portal)
    entries, _ = run_async(portal.access.timeline, patient_id, TimelineFilter())
    target = entries[0]
    assert client.get(f"/access/{target.id}/question").status_code == 200
    empty = post_form(client, f"/access/{target.id}/question", {"text": "  "})
    assert empty.status_code == 400 and "say why" in empty.text
    opened = post_form(client, f"/access/{target.id}/question", {"text": "I have never been to Lab Co."})
    assert opened.status_code == 303
    case_url = opened.headers["location"]
    case_id = case_url.rsplit("/", 1)[1]
    assert "Being looked into" in client.get(case_url).text
    with TestClient(app, base_url=ORIGIN) as staff:
        sign_in(staff, portal, kind="staff", roles=frozenset({"privacy_officer"}))
        queue = staff.get("/staff/cases")
        assert "30 days left" in queue.text or "29 days left" in queue.text
        page = staff.get(f"/staff/cases/{case_id}")
        assert page.status_code == 200 and "I have never been to Lab Co." in page.text
        assert post_form(staff, f"/staff/cases/{case_id}/ask", {"text": "Which lab do you use?"}).status_code == 303
        assert "asked you for more information" in client.get(case_url).text
        assert post_form(client, f"{case_url}/reply", {"text": "Only the hospital lab."}).status_code == 303
        bad = post_form(staff, f"/staff/cases/{case_id}/close", {"finding": "maybe", "text": "x"})
        assert bad.status_code == 400 and "choose a finding" in bad.text
        closed = post_form(
            staff,
            f"/staff/cases/{case_id}/close",
            {"finding": "justified", "text": "Lab Co runs the hospital's tests under contract."},
        )
        assert closed.status_code == 303
    final = client.get(case_url).text
    assert "The access was justified" in final and "runs the hospital&#39;s tests under contract" in final
    actions = [e["action"] for e in portal.ledger.entries_for_subject(patient_id, limit=500)]
    for step in (
        "access.case_opened",
        "access.case_request",
        "access.case_reply",
        "access.case_closed",
        "access.case_context_viewed",
    ):
        assert step in actions


def test_someone_elses_case_is_not_found(client: Client, portal: Portal) -> None:
    other_mrn, _ = new_patient(portal, seed=909)
    other = portal.records.find_by_mrn(other_mrn)
    assert other is not None
    _post(client, _token(portal), json.dumps(balp_event("o1", other_mrn)))
    other_event = run_async(portal.access.timeline, other, TimelineFilter())[0][0]
    case = portal.cases.open_case(other, other_event.id, "why?", actor="patient:x")
    enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    assert client.get(f"/access/cases/{case.id}").status_code == 404
    assert client.get(f"/access/{other_event.id}/question").status_code == 404


def test_alerts_for_emergency_and_new_organisations(client: Client, portal: Portal) -> None:
    from portal.jobs.models import Job
    from tests.support.accounts import post_form

    mrn, _patient_id = _patient_with_events(client, portal)
    assert post_form(client, "/access/alerts", {"emergency": "1", "new_organisation": "1"}).status_code == 303
    with portal.db.read() as session:
        before = session.scalar(select(func.count()).select_from(Job).where(Job.kind == "notify.email"))
    token = _token(portal)
    _post(
        client,
        token,
        "\n".join(
            json.dumps(e)
            for e in [
                balp_event("n1", mrn),  # a known organisation, not an emergency: no alert
                balp_event("n2", mrn, org="Faraway Clinic"),  # a new organisation
                balp_event("n3", mrn, purpose="ETREAT", btg="trauma"),  # an emergency
            ]
        ),
    )
    with portal.db.read() as session:
        payloads = [job.payload for job in session.scalars(select(Job).where(Job.kind == "notify.email"))]
    templates = sorted(p["template"] for p in payloads[before or 0 :])
    assert templates == ["access_emergency", "access_new_organisation"]


def test_accounting_of_disclosures_excludes_tpo_and_is_free_once_a_year(client: Client, portal: Portal) -> None:
    from tests.support.accounts import post_form
    from tests.support.pdf import is_tagged_pdf_ua

    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    disclosure = balp_event("d1", mrn, purpose="PUBHLTH", recorded="2026-09-01T10:00:00Z")
    disclosure["type"] = {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "disclose"}
    disclosure["agent"].append(
        {"type": {"coding": [{"code": "IRCP"}]}, "who": {"display": "State Cancer Registry"}, "requestor": False}
    )
    treatment = balp_event("d2", mrn, purpose="TREAT")
    treatment["type"] = disclosure["type"]
    _post(client, _token(portal), "\n".join(json.dumps(e) for e in (disclosure, treatment)))
    first = post_form(client, "/access/accounting")
    assert first.status_code == 200 and is_tagged_pdf_ua(first.content)
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    record, entries = portal.access.accounting(patient_id, actor="patient:x")
    assert len(entries) == 1 and entries[0].details and entries[0].details["recipient"] == "State Cancer Registry"
    assert record.free is False, "the second in 12 months is not free"


def test_retention_sweep_deletes_old_accesses_and_is_logged(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    _post(
        client,
        _token(portal),
        "\n".join(
            json.dumps(e) for e in (balp_event("old", mrn, recorded="2015-01-01T00:00:00Z"), balp_event("new", mrn))
        ),
    )
    assert portal.access.sweep(6) == 1
    with portal.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AccessEvent)) == 1
    with portal.db.engine.connect() as conn:
        from sqlalchemy import text

        logged = conn.execute(text("SELECT count(*) FROM ledger_entries WHERE action = 'access.retention_sweep'"))
        assert logged.scalar() == 1
    from portal.settings import Settings

    assert "at least 3" in Settings(access_retention_years=2).complete().problems()[0]


def test_weekly_chart_counts_every_access_in_its_week(client: Client, portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    times = ["2026-10-05T10:00:00Z", "2026-10-11T23:00:00Z", "2026-10-12T09:00:00Z", "2026-10-26T08:00:00Z"]
    _post(
        client,
        _token(portal),
        "\n".join(
            json.dumps(balp_event(f"w{i}", mrn, recorded=t, org="A" if i % 2 else "B")) for i, t in enumerate(times)
        ),
    )
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    overview = run_async(portal.access.overview, patient_id, TimelineFilter()).summary
    assert overview.weeks == ["2026-W41", "2026-W42", "2026-W43", "2026-W44"]
    assert overview.series == {"A": [1, 0, 0, 1], "B": [1, 1, 0, 0]}
    assert overview.organisations == ["A", "B"]


def test_lines_only_fhir_resources_can_judge_are_still_judged_line_by_line(client: Client, portal: Portal) -> None:
    """Lines the compiled check does not pass go to fhir.resources: a valid one is accepted, and one that makes
    fhir.resources fail (a contained resource of an unknown type) is a rejected line, not a failed batch."""
    mrn, _ = new_patient(portal)
    with_extension = {**balp_event("f1", mrn), "_outcome": {"extension": [{"url": "http://x", "valueString": "y"}]}}
    unknown_contained = {**balp_event("f2", mrn), "contained": [{"resourceType": "Nonsense"}]}
    lines = [with_extension, unknown_contained, balp_event("f3", mrn)]
    body = _post(client, _token(portal), "\n".join(json.dumps(e) for e in lines)).json()
    assert [(line["line"], line["status"]) for line in body["lines"]] == [
        (1, "accepted"),
        (2, "rejected"),
        (3, "accepted"),
    ]
    assert body["lines"][1]["reason"].startswith("invalid AuditEvent")


def test_overview_counts_agree_with_the_timeline_under_every_filter(client: Client, portal: Portal) -> None:
    """The page's total is the chart's sum; both agree with the timeline and the downloads, filter by filter."""
    from datetime import UTC, datetime

    from portal.access.service import TimelineFilter as F

    mrn, _ = new_patient(portal)
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    events = [
        balp_event("o1", mrn, recorded="2026-09-28T23:30:00Z"),
        balp_event("o2", mrn, org="Lab Co", role="Phlebotomist", recorded="2026-10-04T23:59:59Z"),
        balp_event("o3", mrn, purpose="ETREAT", btg="trauma", recorded="2026-10-05T00:00:00Z"),
        balp_event("o4", mrn, subtype="update", purpose="HPAYMT", recorded="2026-10-20T12:00:00Z"),
    ]
    _post(client, _token(portal), "\n".join(json.dumps(e) for e in events))
    portal.records.read(patient_id, actor="patient:me", role=None, purpose="PATRQT", categories=["clinical"])
    filters = [
        F(),
        F(emergency_only=True),
        F(organisation="Lab Co"),
        F(role="Phlebotomist"),
        F(action="update"),
        F(purpose="HPAYMT"),
        F(agent_kind="person"),
        F(start=datetime(2026, 10, 5, tzinfo=UTC), end=datetime(2026, 10, 21, tzinfo=UTC)),
    ]
    for flt in filters:
        whole = run_async(portal.access.overview, patient_id, flt)
        overview = whole.summary
        entries, total = run_async(portal.access.timeline, patient_id, flt)
        assert overview.total == total == len(portal.access.all_entries(patient_id, flt)), flt
        assert sum(map(sum, overview.series.values())) == total, flt
        assert [e.id for e in whole.entries] == [e.id for e in entries], flt
        assert overview.organisations == ["Lab Co", "Privacy portal", "St Example Hospital"]
    everything = run_async(portal.access.overview, patient_id, F()).summary
    assert everything.total == 5 and list(everything.series) == ["Lab Co", "Privacy portal", "St Example Hospital"]
    assert everything.table[:2] == [("2026-W40", (1, 0, 1)), ("2026-W41", (0, 0, 1))]


def _version(portal: Portal, patient_id: str) -> int:
    with portal.db.read() as session:
        found = session.get(AccessLogVersion, patient_id)
        return found.version if found is not None else 0


def test_the_database_counts_every_change_to_a_patients_accesses(client: Client, portal: Portal) -> None:
    """Triggers keep the version the access summary is cached under, so no writer can forget it: ingest, the
    portal's own reads, the retention sweep, and the deletes and updates erasure and re-keying do."""
    mrn, _ = new_patient(portal)
    other_mrn, _ = new_patient(portal, seed=102)
    patient_id, other = portal.records.find_by_mrn(mrn), portal.records.find_by_mrn(other_mrn)
    assert patient_id is not None and other is not None
    others = _version(portal, other)
    old = balp_event("v-old", mrn, recorded="2015-01-01T00:00:00Z")
    _post(client, _token(portal), "\n".join(json.dumps(e) for e in (old, balp_event("v-new", mrn))))
    versions = [_version(portal, patient_id)]
    portal.records.read(patient_id, actor="patient:me", role=None, purpose="PATRQT", categories=["clinical"])
    versions.append(_version(portal, patient_id))
    assert portal.access.sweep(6) == 1
    versions.append(_version(portal, patient_id))
    with portal.db.write() as session:
        session.execute(update(AccessEvent).where(AccessEvent.patient_id == patient_id).values(purpose="HPAYMT"))
    versions.append(_version(portal, patient_id))
    with portal.db.write() as session:
        session.execute(delete(AccessEvent).where(AccessEvent.patient_id == patient_id))
    versions.append(_version(portal, patient_id))
    assert versions[0] > 0 and all(a < b for a, b in itertools.pairwise(versions)), versions
    assert _version(portal, other) == others, "another patient's accesses are not counted"


def test_the_access_summary_is_cached_until_the_patients_accesses_change(
    client: Client, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    mrn, _patient_id = _patient_with_events(client, portal)
    assert "2 accesses match" in client.get("/access").text
    counted: list[TimelineFilter] = []
    count = AccessLog._weekly_counts

    def counting(self: AccessLog, session: Any, patient_id: str, flt: TimelineFilter) -> Any:
        counted.append(flt)
        return count(self, session, patient_id, flt)

    monkeypatch.setattr(AccessLog, "_weekly_counts", counting)
    page = client.get("/access")
    assert "2 accesses match" in page.text and "Accesses per week, by organisation" in page.text
    assert counted == [], "an unchanged history is summarised from the cache"
    _post(client, _token(portal), json.dumps(balp_event("c3", mrn, org="New Clinic")))
    page = client.get("/access")
    assert "3 accesses match" in page.text and '<th scope="col">New Clinic</th>' in page.text
    assert counted == [TimelineFilter()], "a new access is shown at once"
    filtered = client.get("/access", params={"organisation": "Lab Co"})
    assert "1 access matches" in filtered.text and len(counted) == 2, "each filter has its own summary"
    more = client.get("/access", params={"organisation": "Lab Co", "page": "2"}, headers={"hx-request": "true"})
    assert more.status_code == 200 and len(counted) == 2
