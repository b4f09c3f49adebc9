"""Questioning an access (patients), the case queue (officers), alerts and the accounting of disclosures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from portal.access.cases import FINDINGS, CaseError
from portal.security.guards import Rule, access
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep, patient_id_of

AnyRequest = Request[Principal, WebSession, Any]


@dataclass
class TextForm:
    text: str = ""


@dataclass
class CloseForm:
    finding: str = ""
    text: str = ""


@dataclass
class AlertsForm:
    emergency: str = ""
    new_organisation: str = ""


def _actor(request: AnyRequest) -> str:
    return f"{request.user.kind}:{request.user.subject_id}"


# ---------------------------------------------------------------------- patient


@get("/access/{event_id:str}/question", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def question_form(event_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    return _question_page(request, portal, event_id)


def _question_page(request: AnyRequest, portal: Any, event_id: str, error: str | None = None) -> Template:
    entry = portal.access.own_entry(patient_id_of(request), event_id)
    if entry is None:
        raise NotFoundException("no such access in your history")
    return Template(
        template_name="patient/question.html",
        status_code=400 if error else 200,
        context={"active": "access", "entry": entry, "error": error},
    )


@post(
    "/access/{event_id:str}/question",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def open_case(
    event_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    try:
        case = portal.cases.open_case(patient_id_of(request), event_id, data.text, actor=_actor(request))
    except CaseError as exc:
        return _question_page(request, portal, event_id, str(exc))
    return Redirect(f"/access/cases/{case.id}", status_code=303)


@get("/access/cases", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def my_cases(request: AnyRequest, portal: PortalDep) -> Template:
    return Template(
        template_name="patient/cases.html",
        context={"active": "access", "cases": portal.cases.patient_cases(patient_id_of(request))},
    )


@get("/access/cases/{case_id:str}", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def my_case(case_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    try:
        view = portal.cases.view(case_id, patient_id=patient_id_of(request))
    except CaseError:
        raise NotFoundException("no such case") from None
    return Template(template_name="patient/case.html", context={"active": "access", "view": view, "findings": FINDINGS})


@post(
    "/access/cases/{case_id:str}/reply",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def reply(case_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep) -> Redirect:
    try:
        portal.cases.patient_reply(patient_id_of(request), case_id, data.text, actor=_actor(request))
    except CaseError:
        raise NotFoundException("no such open case") from None
    return Redirect(f"/access/cases/{case_id}?sent=1", status_code=303)


@post("/access/alerts", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False, status_code=303)
def set_alerts(request: AnyRequest, data: URLEncodedBody[AlertsForm], portal: PortalDep) -> Redirect:
    portal.access.set_alerts(
        patient_id_of(request), emergency=data.emergency == "1", new_organisation=data.new_organisation == "1"
    )
    return Redirect("/access?alerts=saved#alerts-heading", status_code=303)


@post("/access/accounting", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def accounting(request: AnyRequest, portal: PortalDep) -> Response[bytes]:
    """HIPAA accounting of disclosures, as a PDF (generated at once; the request is recorded)."""
    record, entries = portal.access.accounting(patient_id_of(request), actor=_actor(request))
    pdf = portal.pdf.render(
        "accounting.html", record=record, entries=entries, controller=portal.settings.controller_name
    )
    return Response(
        pdf,
        media_type="application/pdf",
        status_code=200,
        headers={"Content-Disposition": 'attachment; filename="accounting-of-disclosures.pdf"'},
    )


# ---------------------------------------------------------------------- officers


@get("/staff/cases", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def case_queue(portal: PortalDep, closed: FromQuery[bool] = False) -> Template:
    return Template(
        template_name="staff/cases.html",
        context={
            "active": "cases",
            "cases": portal.cases.queue(include_closed=closed),
            "closed": closed,
            "now": portal.cases.clock(),
        },
    )


@get("/staff/cases/{case_id:str}", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def case_page(case_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    return _staff_case(request, portal, case_id)


def _staff_case(request: AnyRequest, portal: Any, case_id: str, error: str | None = None) -> Template:
    try:
        view = portal.cases.view(case_id)
    except CaseError:
        raise NotFoundException("no such case") from None
    return Template(
        template_name="staff/case.html",
        status_code=400 if error else 200,
        context={
            "active": "cases",
            "view": view,
            "findings": FINDINGS,
            "error": error,
            "surrounding": portal.cases.surrounding(view.case, actor=_actor(request)),
        },
    )


@post(
    "/staff/cases/{case_id:str}/ask",
    opt=access(Rule.officer),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def ask(
    case_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    try:
        portal.cases.ask_patient(case_id, data.text, actor=_actor(request))
    except CaseError as exc:
        return _staff_case(request, portal, case_id, str(exc))
    return Redirect(f"/staff/cases/{case_id}", status_code=303)


@post(
    "/staff/cases/{case_id:str}/close",
    opt=access(Rule.officer),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def close_case(
    case_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[CloseForm], portal: PortalDep
) -> Redirect | Template:
    try:
        portal.cases.close(case_id, data.finding, data.text, actor=_actor(request))
    except CaseError as exc:
        return _staff_case(request, portal, case_id, str(exc))
    return Redirect("/staff/cases", status_code=303)


ROUTES = [
    question_form,
    open_case,
    my_cases,
    my_case,
    reply,
    set_alerts,
    accounting,
    case_queue,
    case_page,
    ask,
    close_case,
]
