"""Export and erasure requests: the patient's pages and the privacy office's queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from portal.accounts.service import StepUpRequiredError
from portal.dsar.deadlines import colour
from portal.dsar.export import Scope
from portal.dsar.lifecycle import BEFORE_PROCESSING, LABELS, Kind, Status
from portal.dsar.service import AUTO_APPROVE_EXPORTS, POLICIES, QueueFilter, RequestError, RequestView
from portal.records.categories import CATEGORIES
from portal.security.guards import Rule, access
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep, patient_id_of

AnyRequest = Request[Principal, WebSession, Any]
EXPORTABLE = [c for c in CATEGORIES if c.code not in {"requests"}]
COMPLAINT = (
    "If you disagree, you can complain to a supervisory authority: in the EU or UK, the data protection "
    "authority where you live or work (GDPR Art. 77); in the US, the HHS Office for Civil Rights "
    "(www.hhs.gov/ocr/complaints). You can also go to court (GDPR Art. 79)."
)


@dataclass
class ExportForm:
    scope: str = "all"
    # One ticked box arrives as a string, several as a list.
    categories: list[str] | str = field(default_factory=list)
    start: str = ""
    end: str = ""


@dataclass
class ErasureForm:
    understood: str = ""


@dataclass
class TextForm:
    text: str = ""


@dataclass
class RecipientForm:
    name: str = ""
    contact: str = ""


@dataclass
class PolicyForm:
    auto_approve_exports: str = ""


class FormError(ValueError):
    pass


def _actor(request: AnyRequest) -> str:
    return f"{request.user.kind}:{request.user.subject_id}"


# ---------------------------------------------------------------------- patients


@get("/requests", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def my_requests(request: AnyRequest, portal: PortalDep) -> Template:
    return Template(
        template_name="patient/requests.html",
        context={
            "active": "requests",
            "requests": portal.requests.patient_requests(patient_id_of(request)),
            "labels": LABELS,
        },
    )


@get("/requests/new/export", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def export_form(request: AnyRequest, portal: PortalDep) -> Template:
    return _export_page(request, portal, ExportForm())


def _export_page(request: AnyRequest, portal: Any, form: ExportForm, error: str | None = None) -> Template:
    return Template(
        template_name="patient/request_export.html",
        status_code=400 if error else 200,
        context={"active": "requests", "categories": EXPORTABLE, "form": form, "error": error},
    )


@post("/requests/export", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False, status_code=303)
def submit_export(request: AnyRequest, data: URLEncodedBody[ExportForm], portal: PortalDep) -> Redirect | Template:
    try:
        scope = parse_scope(data, today=portal.requests.clock().date())
        created = portal.requests.submit_export(request.auth, patient_id_of(request), scope)
    except (FormError, RequestError, StepUpRequiredError) as exc:
        return _export_page(request, portal, data, str(exc))
    return Redirect(f"/requests/{created.id}", status_code=303)


def parse_scope(form: ExportForm, *, today: date) -> Scope:
    """The export scope from the form, or FormError saying what to fix."""
    if form.scope not in {"all", "some"}:
        raise FormError("choose all your data or some categories")
    categories: tuple[str, ...] | None = None
    if form.scope == "some":
        known = {c.code for c in EXPORTABLE}
        ticked = [form.categories] if isinstance(form.categories, str) else form.categories
        chosen = [c for c in ticked if c]
        if not chosen:
            raise FormError("tick at least one category, or choose all your data")
        if unknown := [c for c in chosen if c not in known]:
            raise FormError(f"unknown category: {', '.join(unknown)}")
        categories = tuple(sorted(set(chosen)))
    start, end = _date(form.start, "From"), _date(form.end, "To")
    if start and end and start > end:
        raise FormError("the From date must be on or before the To date")
    if start and start > today:
        raise FormError("the From date cannot be in the future")
    return Scope(categories=categories, start=start, end=end)


def _date(value: str, label: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise FormError(f"{label}: enter a date as YYYY-MM-DD") from None


@get("/requests/new/erasure", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def erasure_form(request: AnyRequest, portal: PortalDep) -> Template:
    return _erasure_page(request, portal)


def _erasure_page(request: AnyRequest, portal: Any, error: str | None = None) -> Template:
    patient_id = patient_id_of(request)
    return Template(
        template_name="patient/request_erasure.html",
        status_code=400 if error else 200,
        context={
            "active": "requests",
            "plan": portal.requests.eraser.plan(patient_id),
            "waiting_days": portal.settings.erasure_waiting_days,
            "open_export": portal.requests.open_request(patient_id, Kind.export),
            "error": error,
        },
    )


@post("/requests/erasure", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False, status_code=303)
def submit_erasure(request: AnyRequest, data: URLEncodedBody[ErasureForm], portal: PortalDep) -> Redirect | Template:
    if data.understood != "yes":
        return _erasure_page(request, portal, "tick the box to confirm you understand what will be erased")
    try:
        created = portal.requests.submit_erasure(request.auth, patient_id_of(request))
    except (RequestError, StepUpRequiredError) as exc:
        return _erasure_page(request, portal, str(exc))
    return Redirect(f"/requests/{created.id}", status_code=303)


@get("/requests/{request_id:str}", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def my_request(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    return _request_page(request, portal, request_id)


def _own_view(request: AnyRequest, portal: Any, request_id: str) -> RequestView:
    try:
        view: RequestView = portal.requests.view(request_id, patient_id=patient_id_of(request))
    except RequestError:
        raise NotFoundException("no such request") from None
    return view


def _request_page(request: AnyRequest, portal: Any, request_id: str, error: str | None = None) -> Template:
    return Template(
        template_name="patient/request.html",
        status_code=400 if error else 200,
        context={**_patient_context(request, portal, request_id), "error": error},
    )


def _patient_context(request: AnyRequest, portal: Any, request_id: str) -> dict[str, Any]:
    view = _own_view(request, portal, request_id)
    return {
        "active": "requests",
        "view": view,
        "now": portal.requests.clock(),
        "cancellable": Status(view.request.status) in BEFORE_PROCESSING,
        "complaint": COMPLAINT,
    }


@get("/requests/{request_id:str}/status", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def request_status(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    """The live status block; htmx polls it while the request is being carried out."""
    return Template(template_name="partials/request_status.html", context=_patient_context(request, portal, request_id))


@post(
    "/requests/{request_id:str}/cancel",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def cancel(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Redirect | Template:
    try:
        portal.requests.cancel(patient_id_of(request), request_id, actor=_actor(request))
    except RequestError as exc:
        return _request_page(request, portal, request_id, str(exc))
    return Redirect(f"/requests/{request_id}", status_code=303)


@post(
    "/requests/{request_id:str}/reply",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def reply(
    request_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    try:
        portal.requests.reply(patient_id_of(request), request_id, data.text, actor=_actor(request))
    except RequestError as exc:
        return _request_page(request, portal, request_id, str(exc))
    return Redirect(f"/requests/{request_id}", status_code=303)


@post(
    "/requests/{request_id:str}/download",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=200,
)
def download(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Response[bytes] | Template:
    try:
        data, filename = portal.requests.download_export(request.auth, patient_id_of(request), request_id)
    except (RequestError, StepUpRequiredError) as exc:
        return _request_page(request, portal, request_id, str(exc))
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


@get(
    "/requests/{request_id:str}/certificate/{fmt:str}",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
)
def my_certificate(
    request_id: FromPath[str], fmt: FromPath[str], request: AnyRequest, portal: PortalDep
) -> Response[bytes]:
    return _certificate(portal, request_id, fmt, patient_id=patient_id_of(request))


def _certificate(portal: Any, request_id: str, fmt: str, *, patient_id: str | None) -> Response[bytes]:
    try:
        signed = portal.requests.certificate(request_id, patient_id=patient_id)
    except RequestError:
        raise NotFoundException("no deletion certificate for this request") from None
    if fmt == "json":
        body, media = json.dumps(signed, indent=2, ensure_ascii=False).encode(), "application/json"
    elif fmt == "pdf":
        body = portal.pdf.render("deletion_certificate.html", signed=signed, cert=signed["document"])
        media = "application/pdf"
    else:
        raise NotFoundException("choose certificate.pdf or certificate.json")
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="deletion-certificate-{request_id[:8]}.{fmt}"'},
    )


# ---------------------------------------------------------------------- officers


@get("/staff/requests", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def queue(
    request: AnyRequest,
    portal: PortalDep,
    *,
    kind: FromQuery[str] = "",
    status: FromQuery[str] = "",
    due: FromQuery[str] = "",
    mine: FromQuery[bool] = False,
    closed: FromQuery[bool] = False,
) -> Template:
    flt = QueueFilter(
        kind=kind if kind in {k.value for k in Kind} else None,
        status=status if status in {s.value for s in Status} else None,
        due=due if due in {"overdue", "soon"} else None,
        assignee=request.user.subject_id if mine else None,
        include_closed=closed,
    )
    now = portal.requests.clock()
    return Template(
        template_name="staff/requests.html",
        context={
            "active": "requests",
            "requests": portal.requests.queue(flt),
            "counts": portal.requests.counts(),
            "flt": flt,
            "mine": mine,
            "labels": LABELS,
            "now": now,
            "colour": colour,
            "policies": POLICIES,
            "auto_approve": portal.requests.policy(AUTO_APPROVE_EXPORTS),
            "is_admin": "privacy_admin" in request.user.roles,
            "statuses": list(Status),
            "recipients": portal.requests.recipients(),
        },
    )


@get("/staff/requests/{request_id:str}", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def request_page(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Template:
    return _staff_page(request, portal, request_id)


def _staff_page(request: AnyRequest, portal: Any, request_id: str, error: str | None = None) -> Template:
    try:
        view = portal.requests.view(request_id)
    except RequestError:
        raise NotFoundException("no such request") from None
    patient_id = view.request.patient_id
    plan = view.plan
    if not plan and view.request.kind == Kind.erasure and Status(view.request.status) in BEFORE_PROCESSING:
        plan = portal.requests.eraser.plan(patient_id)
    return Template(
        template_name="staff/request.html",
        status_code=400 if error else 200,
        context={
            "active": "requests",
            "view": view,
            "plan": plan,
            "inventory": portal.requests.eraser.inventory(patient_id),
            "titles": {c.code: c.title for c in CATEGORIES},
            "names": {a.officer_id: portal.accounts.staff_name(a.officer_id) for a in view.approvals},
            "assignee": portal.accounts.staff_name(view.request.assignee) if view.request.assignee else None,
            "now": portal.requests.clock(),
            "colour": colour,
            "labels": LABELS,
            "me": request.user.subject_id,
            "who": lambda actor: _who(portal, actor),
            "stalled": portal.requests.stalled(view.request),
            "error": error,
        },
    )


def _who(portal: Any, actor: str) -> str:
    """Who did a step, for the officer: the patient, an officer by name, or the portal itself."""
    kind, _, subject = actor.partition(":")
    if kind == "patient":
        return "The patient"
    if kind == "staff":
        return str(portal.accounts.staff_name(subject) or "An officer")
    return "The portal"


def _officer_action(path: str) -> post:
    """A POST route for one officer action on a request; ``path`` is its last segment."""
    return post(
        f"/staff/requests/{{request_id:str}}/{path}",
        opt=access(Rule.officer),
        sync_to_thread=True,
        include_in_schema=False,
        status_code=303,
        name=f"request-{path}",
    )


def _act(request: AnyRequest, portal: Any, request_id: str, action: Callable[[], object]) -> Redirect | Template:
    """Run one officer action; back to the request page, with the refusal shown if there was one."""
    try:
        action()
    except (RequestError, StepUpRequiredError) as exc:
        return _staff_page(request, portal, request_id, str(exc))
    return Redirect(f"/staff/requests/{request_id}", status_code=303)


@_officer_action("take")
def take(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Redirect | Template:
    return _act(request, portal, request_id, lambda: portal.requests.take(request_id, officer_id=_me(request)))


@_officer_action("approve")
def approve(request_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Redirect | Template:
    return _act(request, portal, request_id, lambda: portal.requests.approve(request_id, request.auth))


@_officer_action("ask")
def ask(
    request_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    return _act(
        request, portal, request_id, lambda: portal.requests.ask_patient(request_id, data.text, officer_id=_me(request))
    )


@_officer_action("deny")
def deny(
    request_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    return _act(
        request, portal, request_id, lambda: portal.requests.deny(request_id, data.text, officer_id=_me(request))
    )


@_officer_action("extend")
def extend(
    request_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[TextForm], portal: PortalDep
) -> Redirect | Template:
    return _act(
        request, portal, request_id, lambda: portal.requests.extend(request_id, data.text, officer_id=_me(request))
    )


def _me(request: AnyRequest) -> str:
    return str(request.user.subject_id)


@get(
    "/staff/requests/{request_id:str}/certificate/{fmt:str}",
    opt=access(Rule.officer),
    sync_to_thread=True,
    include_in_schema=False,
)
def staff_certificate(request_id: FromPath[str], fmt: FromPath[str], portal: PortalDep) -> Response[bytes]:
    return _certificate(portal, request_id, fmt, patient_id=None)


@post(
    "/staff/requests/recipients", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False, status_code=303
)
def add_recipient(request: AnyRequest, data: URLEncodedBody[RecipientForm], portal: PortalDep) -> Redirect:
    try:
        portal.requests.register_recipient(data.name, data.contact, actor=_actor(request))
    except RequestError as exc:
        return Redirect(
            f"/staff/requests?{urlencode({'recipient_error': str(exc)})}#recipients-heading", status_code=303
        )
    return Redirect("/staff/requests?recipient=saved#recipients-heading", status_code=303)


@post("/staff/requests/policy", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False, status_code=303)
def set_policy(request: AnyRequest, data: URLEncodedBody[PolicyForm], portal: PortalDep) -> Redirect:
    portal.requests.set_policy(AUTO_APPROVE_EXPORTS, data.auto_approve_exports == "1", actor=_actor(request))
    return Redirect("/staff/requests?policy=saved", status_code=303)


ROUTES = [
    my_requests,
    export_form,
    submit_export,
    erasure_form,
    submit_erasure,
    my_request,
    request_status,
    cancel,
    reply,
    download,
    my_certificate,
    queue,
    set_policy,
    add_recipient,
    request_page,
    take,
    approve,
    ask,
    deny,
    extend,
    staff_certificate,
]
