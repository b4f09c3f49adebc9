"""Evidence packs (officers), the regulator's page, regulators, reports and the breach register (admins)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from portal.accounts.service import AccountError
from portal.evidence.breaches import STATUSES, BreachError
from portal.evidence.service import MAX_SHARE_DAYS, EvidenceError
from portal.security.guards import Rule, access
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep

AnyRequest = Request[Principal, WebSession, Any]
ZIP = "application/zip"


@dataclass
class PackForm:
    scope: str = ""
    request_id: str = ""
    case_id: str = ""
    start: str = ""
    end: str = ""
    recipient: str = ""


@dataclass
class ShareForm:
    recipient: str = ""
    days: str = "30"


@dataclass
class RegulatorForm:
    authority: str = ""
    contact: str = ""
    case_reference: str = ""


@dataclass
class InviteForm:
    email: str = ""
    name: str = ""


@dataclass
class BreachForm:
    title: str = ""
    description: str = ""
    discovered_at: str = ""
    window_start: str = ""
    window_end: str = ""
    actor: str = ""


@dataclass
class BreachStepForm:
    status: str = ""
    text: str = ""


def _actor(request: AnyRequest) -> str:
    return f"staff:{request.user.subject_id}"


def _zip(data: bytes, filename: str) -> Response[bytes]:
    return Response(data, media_type=ZIP, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# ---------------------------------------------------------------------- officers: packs


def _packs_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    return Template(
        template_name="staff/evidence.html",
        status_code=status,
        context={
            "active": "evidence",
            "packs": portal.evidence.packs(),
            "regulators": portal.evidence.regulators(),
            **extra,
        },
    )


@get("/staff/evidence", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def packs_page(portal: PortalDep, request_id: FromQuery[str] = "", case_id: FromQuery[str] = "") -> Template:
    return _packs_page(
        portal, form=PackForm(scope="case" if case_id else "request", request_id=request_id, case_id=case_id)
    )


@post("/staff/evidence", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False, status_code=303)
def request_pack(request: AnyRequest, data: URLEncodedBody[PackForm], portal: PortalDep) -> Redirect | Template:
    scope = {"request": data.request_id, "case": data.case_id, "start": data.start, "end": data.end}
    try:
        pack = portal.evidence.request_pack(
            data.scope, scope, recipient_id=data.recipient or None, actor=_actor(request)
        )
    except EvidenceError as exc:
        return _packs_page(portal, 400, error=str(exc), form=data)
    return Redirect(f"/staff/evidence/{pack.id}", status_code=303)


def _pack_page(portal: Any, pack_id: str, status: int = 200, **extra: Any) -> Template:
    try:
        pack = portal.evidence.pack(pack_id)
    except EvidenceError:
        raise NotFoundException("no such evidence pack") from None
    regulators = portal.evidence.regulators()
    return Template(
        template_name="staff/evidence_pack.html",
        status_code=status,
        context={
            "active": "evidence",
            "pack": pack,
            "failure": portal.evidence.build_failure(pack),
            "shares": portal.evidence.shares(pack_id),
            "regulators": regulators,
            "names": {r.id: r.authority for r in regulators},
            "max_days": MAX_SHARE_DAYS,
            "now": portal.evidence.clock(),
            **extra,
        },
    )


@get("/staff/evidence/{pack_id:str}", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def pack_page(pack_id: FromPath[str], portal: PortalDep) -> Template:
    return _pack_page(portal, pack_id)


@post(
    "/staff/evidence/{pack_id:str}/share",
    opt=access(Rule.officer),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def share_pack(
    pack_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[ShareForm], portal: PortalDep
) -> Redirect | Template:
    if not data.days.strip().isdigit():
        return _pack_page(portal, pack_id, 400, error="give the number of days")
    try:
        portal.evidence.share(pack_id, data.recipient, int(data.days), request.auth)
    except (EvidenceError, AccountError) as exc:  # AccountError: the step-up is missing or too old
        return _pack_page(portal, pack_id, 400, error=str(exc))
    return Redirect(f"/staff/evidence/{pack_id}?shared=1", status_code=303)


@post(
    "/staff/evidence/{pack_id:str}/shares/{share_id:str}/revoke",
    opt=access(Rule.officer),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def revoke_share(
    pack_id: FromPath[str], share_id: FromPath[str], request: AnyRequest, portal: PortalDep
) -> Redirect | Template:
    try:
        portal.evidence.revoke_share(share_id, actor=_actor(request))
    except EvidenceError as exc:
        return _pack_page(portal, pack_id, 400, error=str(exc))
    return Redirect(f"/staff/evidence/{pack_id}", status_code=303)


@get("/staff/evidence/{pack_id:str}/download", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def download_pack(pack_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Response[bytes]:
    """Delivery as a file (e.g. on a medium the regulator asked for); recorded in the ledger."""
    try:
        data, filename = portal.evidence.download_file(pack_id, actor=_actor(request))
    except EvidenceError:
        raise NotFoundException("no such finished evidence pack") from None
    return _zip(data, filename)


# ---------------------------------------------------------------------- regulators


@get("/regulator", opt=access(Rule.regulator), sync_to_thread=True, include_in_schema=False)
def regulator_home(request: AnyRequest, portal: PortalDep) -> Template:
    return Template(
        template_name="regulator/home.html",
        context={
            "active": "regulator",
            "recipient": portal.evidence.regulator_for_account(request.user.subject_id),
            "shared": portal.evidence.shared_with(request.user.subject_id),
            "fingerprint": portal.evidence.fingerprint(),
        },
    )


@get(
    "/regulator/packs/{pack_id:str}/download",
    opt=access(Rule.regulator),
    sync_to_thread=True,
    include_in_schema=False,
)
def regulator_download(pack_id: FromPath[str], request: AnyRequest, portal: PortalDep) -> Response[bytes]:
    try:
        data, filename = portal.evidence.download_shared(pack_id, account_id=request.user.subject_id)
    except EvidenceError:
        raise NotFoundException("no such evidence pack") from None
    return _zip(data, filename)


# ---------------------------------------------------------------------- admins: regulator recipients


def _regulators_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    return Template(
        template_name="staff/admin_regulators.html",
        status_code=status,
        context={"active": "admin", "regulators": portal.evidence.regulators(), **extra},
    )


@get("/admin/regulators", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def regulators_page(portal: PortalDep) -> Template:
    return _regulators_page(portal)


@post("/admin/regulators", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def add_regulator(request: AnyRequest, data: URLEncodedBody[RegulatorForm], portal: PortalDep) -> Template:
    try:
        portal.evidence.add_regulator(data.authority, data.contact, data.case_reference, actor=_actor(request))
    except EvidenceError as exc:
        return _regulators_page(portal, 400, error=str(exc), form=data)
    return _regulators_page(portal, added=data.authority)


@post(
    "/admin/regulators/{recipient_id:str}/invite", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False
)
def invite_regulator(
    recipient_id: FromPath[str], request: AnyRequest, data: URLEncodedBody[InviteForm], portal: PortalDep
) -> Template:
    try:
        link = portal.evidence.invite_regulator(recipient_id, data.email, data.name, actor=_actor(request))
    except (EvidenceError, AccountError) as exc:
        return _regulators_page(portal, 400, error=str(exc))
    return _regulators_page(portal, invite_link=link, invited=data.email)


# ---------------------------------------------------------------------- admins: compliance reports


def _period(start: str | None, end: str | None, now: datetime) -> tuple[date, date]:
    """The period asked for, or the last 12 months; unreadable dates fall back to the default."""
    try:
        last = date.fromisoformat(end) if end else now.date()
        first = date.fromisoformat(start) if start else (last - timedelta(days=365)).replace(day=1)
    except ValueError:
        last, first = now.date(), (now.date() - timedelta(days=365)).replace(day=1)
    return (first, last) if first <= last else (last, first)


@get("/admin/reports", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def reports_page(portal: PortalDep, start: FromQuery[str | None] = None, end: FromQuery[str | None] = None) -> Template:
    now = portal.evidence.clock()
    first, last = _period(start, end, now)
    metrics = portal.evidence.reports.dsar_metrics(first, last, now)
    return Template(
        template_name="staff/admin_reports.html",
        context={"active": "admin", "metrics": metrics, "chart": portal.evidence.reports.chart(metrics)},
    )


@get("/admin/reports/dsar.csv", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def reports_csv(
    portal: PortalDep, start: FromQuery[str | None] = None, end: FromQuery[str | None] = None
) -> Response[bytes]:
    now = portal.evidence.clock()
    metrics = portal.evidence.reports.dsar_metrics(*_period(start, end, now), now)
    return Response(
        portal.evidence.reports.metrics_csv(metrics),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="dsar-metrics-{metrics.start}-{metrics.end}.csv"'},
    )


@get("/admin/reports/processing-record.json", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def processing_record_json(portal: PortalDep) -> Response[bytes]:
    record = portal.evidence.reports.processing_record(portal.evidence.clock())
    return Response(
        json.dumps(record, indent=2, ensure_ascii=False).encode(),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="record-of-processing.json"'},
    )


@get("/admin/reports/processing-record.pdf", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def processing_record_pdf(portal: PortalDep) -> Response[bytes]:
    reports = portal.evidence.reports
    return Response(
        reports.processing_record_pdf(reports.processing_record(portal.evidence.clock())),
        media_type="application/pdf",
        headers={"Content-Disposition": 'attachment; filename="record-of-processing.pdf"'},
    )


# ---------------------------------------------------------------------- admins: breach register


def _breaches_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    return Template(
        template_name="staff/admin_breaches.html",
        status_code=status,
        context={"active": "admin", "breaches": portal.evidence.breaches.register(), "statuses": STATUSES, **extra},
    )


def _instant(value: str, what: str) -> datetime:
    """A datetime-local field, read as UTC (the pages say so)."""
    try:
        return datetime.fromisoformat(value.strip()).replace(tzinfo=UTC)
    except ValueError:
        raise BreachError(f"{what}: enter a date and time") from None


@get("/admin/breaches", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def breaches_page(portal: PortalDep) -> Template:
    return _breaches_page(portal)


@post("/admin/breaches", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False, status_code=303)
def record_breach(request: AnyRequest, data: URLEncodedBody[BreachForm], portal: PortalDep) -> Redirect | Template:
    try:
        breach = portal.evidence.breaches.record(
            title=data.title,
            description=data.description,
            discovered_at=_instant(data.discovered_at, "Discovered"),
            window_start=_instant(data.window_start, "From"),
            window_end=_instant(data.window_end, "To"),
            actor_filter=data.actor,
            actor=_actor(request),
            now=portal.evidence.clock(),
        )
    except BreachError as exc:
        return _breaches_page(portal, 400, error=str(exc), form=data)
    return Redirect(f"/admin/breaches/{breach.id}", status_code=303)


def _breach_page(portal: Any, breach_id: str, status: int = 200, error: str | None = None) -> Template:
    try:
        view = portal.evidence.breaches.view(breach_id, portal.evidence.clock())
    except BreachError:
        raise NotFoundException("no such breach") from None
    return Template(
        template_name="staff/admin_breach.html",
        status_code=status,
        context={"active": "admin", "view": view, "statuses": STATUSES, "error": error},
    )


@get("/admin/breaches/{breach_id:str}", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def breach_page(breach_id: FromPath[str], portal: PortalDep) -> Template:
    return _breach_page(portal, breach_id)


@post(
    "/admin/breaches/{breach_id:str}/{step:str}",
    opt=access(Rule.admin),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def breach_step(
    breach_id: FromPath[str],
    step: FromPath[str],
    request: AnyRequest,
    data: URLEncodedBody[BreachStepForm],
    portal: PortalDep,
) -> Redirect | Template:
    """A decision, a notification sent elsewhere, or the notice shown to the affected patients."""
    register, actor, now = portal.evidence.breaches, _actor(request), portal.evidence.clock()
    try:
        if step == "decision":
            register.decide(breach_id, data.status, data.text, actor=actor, now=now)
        elif step == "notification":
            register.record_notification(breach_id, data.text, actor=actor, now=now)
        elif step == "notify-patients":
            register.notify_patients(breach_id, data.text, actor=actor, now=now)
        else:
            raise NotFoundException("no such step")
    except BreachError as exc:
        return _breach_page(portal, breach_id, 400, str(exc))
    return Redirect(f"/admin/breaches/{breach_id}", status_code=303)


# ---------------------------------------------------------------------- patients


ROUTES = [
    packs_page,
    request_pack,
    pack_page,
    share_pack,
    revoke_share,
    download_pack,
    regulator_home,
    regulator_download,
    regulators_page,
    add_regulator,
    invite_regulator,
    reports_page,
    reports_csv,
    processing_record_json,
    processing_record_pdf,
    breaches_page,
    record_breach,
    breach_page,
    breach_step,
]
