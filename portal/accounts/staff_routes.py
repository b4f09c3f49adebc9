"""Staff pages: the patient's home, invitations and re-enrolment (officers), staff accounts (admins)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Redirect, Template

from portal.accounts.service import STAFF_ROLES, AccountError
from portal.records.categories import BY_CODE
from portal.security.guards import Rule, access, effective_roles
from portal.security.sessions import Principal, WebSession
from portal.web.deps import PortalDep

StaffRequest = Request[Principal, WebSession, Any]


@dataclass
class InviteForm:
    mrn: str


@dataclass
class ReenrolForm:
    mrn: str
    identity_check: str


@dataclass
class StaffForm:
    email: str
    display_name: str
    role: str


def _staff_ref(request: StaffRequest) -> str:
    return f"staff:{request.user.subject_id}"


# ---------------------------------------------------------------------- patient home


@get("/patient", opt=access(Rule.patient), sync_to_thread=True, include_in_schema=False)
def patient_home(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Template:
    account = portal.accounts.account(request.user.subject_id)
    counts = portal.records.counts(account.patient_id) if account and account.patient_id else {}
    held = [(BY_CODE[code], count) for code, count in sorted(counts.items()) if code in BY_CODE]
    return Template(
        template_name="patient/home.html",
        context={
            "active": "home",
            "held": held,
            "passkeys": portal.accounts.passkeys(request.user.subject_id),
            "codes_left": portal.accounts.unused_code_count(request.user.subject_id),
            "notices": portal.evidence.breaches.notices_for(account.patient_id)
            if account and account.patient_id
            else [],
        },
    )


# ---------------------------------------------------------------------- officers


@get("/staff", opt=access(Rule.officer, Rule.regulator), sync_to_thread=False, include_in_schema=False)
def staff_home(request: StaffRequest) -> Template | Redirect:
    # Every staff sign-in lands here; regulators have a page of their own.
    if Rule.officer.value not in effective_roles(request.user):
        return Redirect("/regulator")
    return Template(template_name="staff/home.html", context={"active": "staff"})


@post("/staff/invitations", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def invite_patient(request: StaffRequest, data: URLEncodedBody[InviteForm], portal: PortalDep) -> Template:
    try:
        link = portal.accounts.invite_patient(data.mrn.strip(), actor=_staff_ref(request))
    except AccountError as exc:
        return Template(
            template_name="staff/home.html",
            status_code=400,
            context={"active": "staff", "invite_error": str(exc), "mrn": data.mrn},
        )
    return Template(template_name="staff/home.html", context={"active": "staff", "invite_link": link})


@post("/staff/reenrolments", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def reenrol_patient(request: StaffRequest, data: URLEncodedBody[ReenrolForm], portal: PortalDep) -> Template:
    try:
        link = portal.accounts.reenrol_patient(
            data.mrn.strip(), identity_check=data.identity_check, actor=_staff_ref(request)
        )
    except AccountError as exc:
        return Template(
            template_name="staff/home.html",
            status_code=400,
            context={
                "active": "staff",
                "reenrol_error": str(exc),
                "reenrol_mrn": data.mrn,
                "identity_check": data.identity_check,
            },
        )
    return Template(template_name="staff/home.html", context={"active": "staff", "reenrol_link": link})


@post("/staff/unlocks", opt=access(Rule.officer), sync_to_thread=True, include_in_schema=False)
def unlock_patient(request: StaffRequest, data: URLEncodedBody[InviteForm], portal: PortalDep) -> Template:
    try:
        portal.accounts.unlock_patient(data.mrn, actor=_staff_ref(request))
    except AccountError as exc:
        return Template(
            template_name="staff/home.html",
            status_code=400,
            context={"active": "staff", "unlock_error": str(exc), "unlock_mrn": data.mrn},
        )
    return Template(template_name="staff/home.html", context={"active": "staff", "unlocked": data.mrn})


# ---------------------------------------------------------------------- admins


def _staff_page(portal: Any, status: int = 200, **extra: Any) -> Template:
    return Template(
        template_name="staff/admin_staff.html",
        status_code=status,
        context={
            "active": "admin",
            "staff": portal.accounts.staff_accounts(),
            "roles": STAFF_ROLES,
            **extra,
        },
    )


@get("/admin/staff", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def staff_admin(portal: PortalDep) -> Template:
    return _staff_page(portal)


@post("/admin/staff", opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def invite_staff(request: StaffRequest, data: URLEncodedBody[StaffForm], portal: PortalDep) -> Template:
    try:
        link = portal.accounts.create_staff(data.email, data.role, data.display_name, actor=_staff_ref(request))
    except AccountError as exc:
        return _staff_page(portal, 400, error=str(exc), form=data)
    return _staff_page(portal, invite_link=link, invited=data.email)


@post(
    "/admin/staff/{account_id:str}/{action:str}",
    opt=access(Rule.admin),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def change_staff(
    account_id: FromPath[str], action: FromPath[str], request: StaffRequest, portal: PortalDep
) -> Redirect | Template:
    actor = _staff_ref(request)
    try:
        if action in {"disable", "enable"}:
            if account_id == request.user.subject_id:
                raise AccountError("you cannot disable your own account")
            portal.accounts.set_disabled(account_id, action == "disable", actor=actor)
        elif action == "unlock":
            portal.accounts.unlock(account_id, actor=actor)
        else:
            raise AccountError("unknown action")
    except AccountError as exc:
        return _staff_page(portal, 400, error=str(exc))
    return Redirect("/admin/staff", status_code=303)


ROUTES = [
    patient_home,
    staff_home,
    invite_patient,
    reenrol_patient,
    unlock_patient,
    staff_admin,
    invite_staff,
    change_staff,
]
