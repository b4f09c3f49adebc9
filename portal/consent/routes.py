"""Consent pages: the patient's choices (htmx, works without JavaScript), notices, receipts, staff and admin."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Redirect, Template

from portal.consent.service import ConsentError, render_notice
from portal.security.guards import Rule, access
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep, patient_id_of

PatientRequest = Request[Principal, WebSession, Any]


@dataclass
class ChangeForm:
    event: str = ""


@dataclass
class StaffChangeForm:
    mrn: str = ""
    purpose: str = ""
    event: str = ""
    reason: str = ""
    evidence_ref: str = ""


@dataclass
class PurposeForm:
    code: str = ""
    title: str = ""
    summary: str = ""
    lawful_basis: str = ""
    categories: str = ""
    recipients: str = ""
    jurisdiction: str = ""
    mode: str = "opt-in"
    purpose_of_use: str = ""


@dataclass
class NoticeForm:
    text: str = ""
    material: str = ""


def _is_htmx(request: PatientRequest) -> bool:
    return request.headers.get("hx-request") == "true"


# ---------------------------------------------------------------------- patient


@get("/consent", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def consent_page(request: PatientRequest, portal: PortalDep) -> Template:
    patient_id = patient_id_of(request)
    return Template(
        template_name="patient/consent.html",
        context={
            "active": "consent",
            "views": portal.consent.overview(patient_id),
            "history": portal.consent.history(patient_id),
        },
    )


@post("/consent/{code:str}", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def change_consent(
    code: FromPath[str], request: PatientRequest, data: URLEncodedBody[ChangeForm], portal: PortalDep
) -> Template | Redirect:
    patient_id = patient_id_of(request)
    try:
        portal.consent.change(
            patient_id, code, data.event, channel="portal", actor=f"patient:{request.user.subject_id}"
        )
    except ConsentError as exc:
        if _is_htmx(request):
            return _card(portal, patient_id, code, error=str(exc), status=400)
        return Template(
            template_name="patient/consent.html",
            status_code=400,
            context={
                "active": "consent",
                "error": str(exc),
                "views": portal.consent.overview(patient_id),
                "history": portal.consent.history(patient_id),
            },
        )
    if _is_htmx(request):
        message = "Consent given. Thank you." if data.event == "grant" else "Consent withdrawn. It applies from now on."
        return _card(portal, patient_id, code, message=message)
    return Redirect(f"/consent?changed={code}#purpose-{code}", status_code=303)


def _card(
    portal: Any, patient_id: str, code: str, *, message: str | None = None, error: str | None = None, status: int = 200
) -> Template:
    view = next(v for v in portal.consent.overview(patient_id) if v.purpose.code == code)
    return Template(
        template_name="partials/consent_card.html",
        status_code=status,
        context={
            "view": view,
            "message": message,
            "error": error,
            "oob_history": True,
            "history": portal.consent.history(patient_id),
        },
    )


@get("/consent/notices/{code:str}/{version:int}", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def notice_page(code: FromPath[str], version: FromPath[int], portal: PortalDep) -> Template:
    try:
        notice = portal.consent.notice(code, version)
        purpose = portal.consent.purpose(code)
    except ConsentError:
        return Template(
            template_name="errors/error.html",
            status_code=404,
            context={"title": "Notice not found", "message": "There is no published notice at this address."},
        )
    return Template(
        template_name="consent_notice.html",
        context={
            "purpose": purpose,
            "notice": notice,
            "html": render_notice(notice.text),
        },
    )


@get(
    "/consent/receipts/{receipt_id:str}/receipt.json",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
)
def receipt_json(receipt_id: FromPath[str], request: PatientRequest, portal: PortalDep) -> Response[bytes]:
    document = _own_receipt(request, portal, receipt_id)
    return Response(
        json.dumps(document, indent=2).encode(),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="consent-receipt-{receipt_id}.json"'},
    )


@get(
    "/consent/receipts/{receipt_id:str}/receipt.pdf",
    opt=access(Rule.patient),
    sync_to_thread=True,
    include_in_schema=False,
)
def receipt_pdf(receipt_id: FromPath[str], request: PatientRequest, portal: PortalDep) -> Response[bytes]:
    document = _own_receipt(request, portal, receipt_id)
    pdf = portal.pdf.render(
        "consent_receipt.html",
        document=document,
        receipt=document["receipt"],
        purpose=document["receipt"]["services"][0]["purposes"][0],
    )
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="consent-receipt-{receipt_id}.pdf"'},
    )


def _own_receipt(request: PatientRequest, portal: Any, receipt_id: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = portal.consent.receipt(patient_id_of(request), receipt_id)
    except ConsentError:
        raise NotFoundException("no such receipt") from None
    return document


@get("/consent/fhir/{code:str}", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def consent_fhir(code: FromPath[str], request: PatientRequest, portal: PortalDep) -> Response[dict[str, Any]]:
    try:
        resource = portal.consent.fhir_consent(patient_id_of(request), code)
    except ConsentError:
        raise NotFoundException("no such consent purpose") from None
    return Response(resource, media_type="application/fhir+json")


# ---------------------------------------------------------------------- staff


@get("/staff/consents", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def staff_consents(portal: PortalDep) -> Template:
    return _staff_page(portal)


def _staff_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    return Template(
        template_name="staff/consents.html",
        status_code=status,
        context={
            "active": "consents",
            "purposes": portal.consent.purposes(),
            "report": portal.consent.report(),
            **extra,
        },
    )


@post("/staff/consents", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def record_on_behalf(request: PatientRequest, data: URLEncodedBody[StaffChangeForm], portal: PortalDep) -> Template:
    patient_id = portal.records.find_by_mrn(data.mrn.strip()) if data.mrn.strip() else None
    try:
        if patient_id is None:
            raise ConsentError("no patient has that MRN")
        portal.consent.change(
            patient_id,
            data.purpose,
            data.event,
            channel="staff",
            actor=f"staff:{request.user.subject_id}",
            reason=data.reason,
            evidence_ref=data.evidence_ref,
        )
    except ConsentError as exc:
        return _staff_page(portal, 400, error=str(exc), form=data)
    return _staff_page(portal, recorded=True)


@get("/staff/consents/report.csv", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def consent_report_csv(portal: PortalDep) -> Response[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["purpose", "title", "mode", "notice_version", "granted", "withdrawn"])
    writer.writeheader()
    writer.writerows(portal.consent.report())
    return Response(
        buffer.getvalue().encode(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="consent-report.csv"'},
    )


# ---------------------------------------------------------------------- admin


def _admin_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    from portal.records.categories import CATEGORIES

    purposes = portal.consent.purposes(include_inactive=True)
    return Template(
        template_name="staff/admin_consent.html",
        status_code=status,
        context={
            "active": "admin",
            "purposes": purposes,
            "categories": CATEGORIES,
            "notices": {p.code: portal.consent.notices(p.code) for p in purposes},
            **extra,
        },
    )


@get("/admin/consent", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def admin_consent(portal: PortalDep) -> Template:
    return _admin_page(portal)


@post("/admin/consent/purposes", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def create_purpose(request: PatientRequest, data: URLEncodedBody[PurposeForm], portal: PortalDep) -> Template:
    try:
        portal.consent.create_purpose(
            code=data.code.strip(),
            title=data.title,
            summary=data.summary,
            lawful_basis=data.lawful_basis,
            categories=[c.strip() for c in data.categories.split(",") if c.strip()],
            recipients=data.recipients.split(";"),
            jurisdiction=data.jurisdiction,
            mode=data.mode,
            purpose_of_use=data.purpose_of_use.strip(),
            actor=f"staff:{request.user.subject_id}",
        )
    except ConsentError as exc:
        return _admin_page(portal, 400, error=str(exc), form=data)
    return _admin_page(portal, message=f"Purpose {data.code} created. Draft and publish its notice next.")


@post("/admin/consent/{code:str}/notices", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def draft_notice(
    code: FromPath[str], request: PatientRequest, data: URLEncodedBody[NoticeForm], portal: PortalDep
) -> Template:
    try:
        notice = portal.consent.draft_notice(
            code, data.text, material=data.material == "yes", actor=f"staff:{request.user.subject_id}"
        )
    except ConsentError as exc:
        return _admin_page(portal, 400, error=str(exc))
    return _admin_page(portal, message=f"Draft version {notice.version} saved; publish it when ready.")


@post(
    "/admin/consent/notices/{notice_id:str}/publish",
    opt=access(Rule.admin),
    sync_to_thread=True,
    include_in_schema=False,
)
def publish_notice(notice_id: FromPath[str], request: PatientRequest, portal: PortalDep) -> Template:
    try:
        notice = portal.consent.publish_notice(notice_id, actor=f"staff:{request.user.subject_id}")
    except ConsentError as exc:
        return _admin_page(portal, 400, error=str(exc))
    return _admin_page(portal, message=f"Version {notice.version} of {notice.purpose_code} is published.")


ROUTES = [
    consent_page,
    change_consent,
    notice_page,
    receipt_json,
    receipt_pdf,
    consent_fhir,
    staff_consents,
    record_on_behalf,
    consent_report_csv,
    admin_consent,
    create_purpose,
    draft_notice,
    publish_notice,
]
