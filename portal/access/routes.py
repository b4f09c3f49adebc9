"""The patient's access history: timeline with filters and htmx paging, chart, downloads."""

from __future__ import annotations

import csv
import functools
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.params import FromQuery
from litestar.response import Template

from portal.access.chart import weekly_chart
from portal.access.service import ACTIONS, PAGE_SIZE, PURPOSE_WORDS, AccessSummary, TimelineFilter
from portal.security.guards import Rule, access
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep, patient_id_of

PatientRequest = Request[Principal, WebSession, Any]


def _day(value: str | None, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        return None  # an unreadable date filters nothing; the form shows what was applied
    start = datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _filter(params: dict[str, str | None]) -> TimelineFilter:
    return TimelineFilter(
        start=_day(params.get("from")),
        end=_day(params.get("to"), end=True),
        organisation=params.get("organisation") or None,
        role=params.get("role") or None,
        action=params.get("action") if params.get("action") in ACTIONS else None,
        purpose=params.get("purpose") if params.get("purpose") in PURPOSE_WORDS else None,
        emergency_only=params.get("emergency") == "1",
        agent_kind=params.get("who") if params.get("who") in ("person", "system") else None,
    )


def _params(request: PatientRequest) -> dict[str, str | None]:
    keys = ("from", "to", "organisation", "role", "action", "purpose", "emergency", "who")
    return {key: request.query_params.get(key) for key in keys}


@get("/access", opt=access(Rule.patient), include_in_schema=False)
async def access_page(request: PatientRequest, portal: PortalDep, page: FromQuery[int] = 1) -> Template:
    patient_id = patient_id_of(request)
    params = _params(request)
    flt = _filter(params)
    page = max(page, 1)
    context = {"active": "access", "page": page, "params": params, "query": _query(params), "page_size": PAGE_SIZE}
    if request.headers.get("hx-request") == "true":  # htmx only ever asks /access for the next page: no chart
        entries, total = await portal.access.timeline(patient_id, flt, page=page)
        return Template(
            template_name="partials/access_rows.html", context={**context, "entries": entries, "total": total}
        )
    overview = await portal.access.overview(patient_id, flt, page=page)
    summary = overview.summary
    return Template(
        template_name="patient/access.html",
        context={
            **context,
            "entries": overview.entries,
            "total": summary.total,
            "chart_section": summary.rendered("chart", functools.partial(_chart_section, request)),
            "organisations": summary.organisations,
            "actions": ACTIONS,
            "purposes": PURPOSE_WORDS,
            "alerts": overview.alerts,
        },
    )


def _chart_section(request: PatientRequest, summary: AccessSummary) -> str:
    """The chart and its table (autoescaped HTML): rendered once per cached summary, as they hold as many
    cells as weeks."""
    template = request.app.template_engine.get_template("partials/access_chart.html")  # type: ignore[union-attr]
    return str(template.render(summary=summary, chart=weekly_chart(summary.weeks, summary.series)))


def _query(params: dict[str, str | None]) -> str:
    return urlencode({k: v for k, v in params.items() if v})


@get("/access/history.csv", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def access_csv(request: PatientRequest, portal: PortalDep) -> Response[bytes]:
    entries = portal.access.all_entries(patient_id_of(request), _filter(_params(request)))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "time_utc",
            "what_happened",
            "action",
            "purpose",
            "emergency",
            "who_kind",
            "organisation",
            "department",
            "role",
            "person",
        ]
    )
    for entry in entries:
        details = entry.details or {}
        writer.writerow(
            [
                entry.occurred_at.isoformat(),
                entry.sentence,
                entry.action,
                entry.purpose,
                entry.emergency,
                entry.agent_kind,
                details.get("organisation"),
                details.get("department"),
                details.get("role"),
                details.get("person") if portal.access.staff_named else None,
            ]
        )
    return Response(
        buffer.getvalue().encode(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="access-history.csv"'},
    )


@get("/access/history.ndjson", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def access_ndjson(request: PatientRequest, portal: PortalDep) -> Response[bytes]:
    """The history as FHIR AuditEvents, one per line."""
    patient_id = patient_id_of(request)
    entries = portal.access.all_entries(patient_id, _filter(_params(request)))
    lines = [json.dumps(_audit_event(patient_id, entry)) for entry in entries]
    return Response(
        ("\n".join(lines) + "\n").encode(),
        media_type="application/fhir+ndjson",
        headers={"Content-Disposition": 'attachment; filename="access-history.ndjson"'},
    )


def _audit_event(patient_id: str, entry: Any) -> dict[str, Any]:
    details = entry.details or {}
    subtype = {"read": "read", "query": "search-type", "create": "create", "update": "update", "delete": "delete"}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry.id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": entry.occurred_at.isoformat().replace("+00:00", "Z"),
        "outcome": "0",
        "purposeOfEvent": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": entry.purpose}]}
        ],
        "agent": [
            {
                "requestor": True,
                "who": {"display": details.get("person") or details.get("role") or "unknown"},
                "role": [{"text": details.get("role") or "unknown"}],
            }
        ],
        "source": {
            "observer": {"display": details.get("organisation") or "unknown"},
            **({"site": details["department"]} if details.get("department") else {}),
        },
        "entity": [
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        ],
    }
    if entry.action in subtype:
        resource["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype[entry.action]}]
    else:
        resource["type"] = {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "disclose"}
    return resource


PDF_ROW_LIMIT = 2000


@get("/access/history.pdf", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def access_pdf(request: PatientRequest, portal: PortalDep) -> Response[bytes]:
    """The history as an accessible PDF; very long histories are capped with a pointer to the CSV."""
    params = _params(request)
    entries = portal.access.all_entries(patient_id_of(request), _filter(params))
    pdf = portal.pdf.render(
        "access_history.html",
        entries=entries,
        limit=PDF_ROW_LIMIT,
        filtered=any(params.values()),
        controller=portal.settings.controller_name,
        generated=portal.access.clock(),
    )
    return Response(
        pdf, media_type="application/pdf", headers={"Content-Disposition": 'attachment; filename="access-history.pdf"'}
    )


ROUTES = [access_page, access_csv, access_ndjson, access_pdf]
