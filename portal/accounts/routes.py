"""Sign-in, enrolment, step-up and the account pages (passkeys, recovery codes, security activity).

Thin handlers: parse, call one AccountService method, render. WebAuthn ceremonies are JSON
endpoints driven by static/passkeys.js; everything else is plain forms that htmx enhances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect, Template

from portal.accounts.passkeys import Options
from portal.accounts.service import AccountError, StepUpRequiredError
from portal.security.guards import Rule, access, during_recovery
from portal.security.sessions import COOKIE_NAME, Principal, WebSession, session_cookie
from portal.web.deps import PortalDep

SIGNED_IN = (Rule.patient, Rule.officer, Rule.regulator)
AnyRequest = Request[Any, Any, Any]


@dataclass
class CeremonyResult:
    challenge_id: str
    credential: dict[str, Any]


@dataclass
class SigninResult(CeremonyResult):
    next: FromQuery[str | None] = None


def safe_next(target: str | None) -> str | None:
    """Only same-site paths: never an open redirect (ASVS 3.7.2)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


@dataclass
class BirthDateForm:
    # Strings, not ints: a typo gets our own clear message instead of a generic validation error.
    day: str = ""
    month: str = ""
    year: str = ""

    def as_date(self) -> date:
        """The date entered; ValueError when it is not a real date."""
        parts = (self.year.strip(), self.month.strip(), self.day.strip())
        if not all(part.isdigit() for part in parts) or len(parts[0]) != 4:
            raise ValueError("not a date")
        return date(int(parts[0]), int(parts[1]), int(parts[2]))


@dataclass
class RecoveryForm:
    code: str


@dataclass
class RenameForm:
    name: str


def _client(request: AnyRequest) -> tuple[str, str]:
    address = request.client.host if request.client else "unknown"
    return request.headers.get("user-agent", "")[:300], address


def _options(options: Options) -> dict[str, Any]:
    return {"challenge_id": options.challenge_id, "publicKey": options.public_key}


def _problem(message: str, status: int = 400) -> Response[dict[str, str]]:
    return Response({"error": message}, status_code=status)


def _signed_in(redirect: str, token: FromPath[str]) -> Response[dict[str, str]]:
    return Response({"redirect": redirect}, cookies=[session_cookie(token)])


def _home_for(principal: Principal | None) -> str:
    if principal is None:
        return "/signin"
    return _home_for_kind(principal.kind)


def _home_for_kind(kind: str) -> str:
    return "/staff" if kind == "staff" else "/patient"


# ---------------------------------------------------------------------- sign-in


@get("/signin", opt=access(Rule.public), sync_to_thread=False, include_in_schema=False)
def signin_page(
    request: AnyRequest, reason: FromQuery[str | None] = None, next: FromQuery[str | None] = None
) -> Template | Redirect:
    if request.user is not None:
        return Redirect(_home_for(request.user))
    return Template(
        template_name="auth/signin.html", context={"active": "signin", "reason": reason, "next": safe_next(next)}
    )


@post("/auth/signin/options", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def signin_options(request: AnyRequest, portal: PortalDep) -> dict[str, Any]:
    _, address = _client(request)
    return _options(portal.accounts.signin_options(client_address=address))


@post("/auth/signin", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def signin_finish(request: AnyRequest, data: JSONBody[SigninResult], portal: PortalDep) -> Response[dict[str, str]]:
    agent, address = _client(request)
    try:
        signed = portal.accounts.finish_signin(
            data.challenge_id, json.dumps(data.credential), user_agent=agent, client_address=address
        )
    except AccountError as exc:
        return _problem(str(exc))
    if signed.next_step == "add-passkey":
        return _signed_in("/account/passkeys?required=1", signed.token)
    return _signed_in(safe_next(data.next) or _home_for_kind(signed.account.kind), signed.token)


@get("/signin/recovery", opt=access(Rule.public), sync_to_thread=False, include_in_schema=False)
def recovery_page() -> Template:
    return Template(template_name="auth/recovery.html", context={"active": "signin"})


@post("/signin/recovery", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False, status_code=303)
def recovery_signin(request: AnyRequest, data: URLEncodedBody[RecoveryForm], portal: PortalDep) -> Template | Redirect:
    agent, address = _client(request)
    try:
        signed = portal.accounts.signin_with_recovery_code(data.code, user_agent=agent, client_address=address)
    except AccountError as exc:
        return Template(template_name="auth/recovery.html", context={"error": str(exc)}, status_code=400)
    return Redirect("/account/passkeys?required=1", status_code=303, cookies=[session_cookie(signed.token)])


@get("/home", opt=access(Rule.public), sync_to_thread=False, include_in_schema=False)
def home_redirect(request: AnyRequest) -> Redirect:
    return Redirect(_home_for(request.user))


# ---------------------------------------------------------------------- enrolment


@get("/enrol/{token:str}", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def enrol_page(token: FromPath[str], portal: PortalDep) -> Template:
    view = portal.accounts.invitation(token)
    status = 200 if view.status == "live" else 410
    return Template(template_name="auth/enrol.html", context={"invite": view, "token": token}, status_code=status)


@post(
    "/enrol/{token:str}/birth-date",
    opt=access(Rule.public),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def enrol_birth_date(
    token: FromPath[str], request: AnyRequest, data: URLEncodedBody[BirthDateForm], portal: PortalDep
) -> Template | Redirect:
    _, address = _client(request)
    try:
        given = data.as_date()
    except ValueError:
        return _enrol_error(portal, token, "enter a real date (day, month and year)")
    try:
        portal.accounts.confirm_birth_date(token, given, client_address=address)
    except AccountError as exc:
        return _enrol_error(portal, token, str(exc))
    return Redirect(f"/enrol/{token}", status_code=303)


def _enrol_error(portal: Any, token: FromPath[str], message: str) -> Template:
    view = portal.accounts.invitation(token)
    return Template(
        template_name="auth/enrol.html", context={"invite": view, "token": token, "error": message}, status_code=400
    )


@post("/enrol/{token:str}/options", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def enrol_options(token: FromPath[str], portal: PortalDep) -> Response[dict[str, Any]]:
    try:
        return Response(_options(portal.accounts.enrolment_options(token)))
    except AccountError as exc:
        return _problem(str(exc))


@post("/enrol/{token:str}/finish", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def enrol_finish(
    token: FromPath[str], request: AnyRequest, data: JSONBody[CeremonyResult], portal: PortalDep
) -> Response[dict[str, str]]:
    agent, address = _client(request)
    try:
        signed = portal.accounts.finish_enrolment(
            token, data.challenge_id, json.dumps(data.credential), user_agent=agent, client_address=address
        )
    except AccountError as exc:
        return _problem(str(exc))
    return _signed_in("/account/recovery-codes?welcome=1", signed.token)


# ---------------------------------------------------------------------- step-up


@post("/auth/stepup/options", opt=access(*SIGNED_IN), sync_to_thread=True, include_in_schema=False)
def stepup_options(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Response[dict[str, Any]]:
    try:
        return Response(_options(portal.accounts.stepup_options(request.user.subject_id)))
    except AccountError as exc:
        return _problem(str(exc))


@dataclass
class StepUpResult(CeremonyResult):
    purpose: str = "confirm"


@post("/auth/stepup", opt=access(*SIGNED_IN), sync_to_thread=True, include_in_schema=False)
def stepup_finish(request: AnyRequest, data: JSONBody[StepUpResult], portal: PortalDep) -> Response[dict[str, str]]:
    current = request.cookies.get(COOKIE_NAME, "")
    try:
        token = portal.accounts.finish_stepup(
            current, data.challenge_id, json.dumps(data.credential), purpose=data.purpose
        )
    except AccountError as exc:
        return _problem(str(exc))
    return Response({"ok": "confirmed"}, cookies=[session_cookie(token)])


@post(
    "/session/ping",
    opt=during_recovery(access(*SIGNED_IN)),
    sync_to_thread=False,
    include_in_schema=False,
    status_code=204,
)
def session_ping() -> None:
    """Keeps the session alive (loading it touched its idle timer); the expiry warning calls it."""


# ---------------------------------------------------------------------- passkeys


@get("/account/passkeys", opt=during_recovery(access(*SIGNED_IN)), sync_to_thread=True, include_in_schema=False)
def passkeys_page(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Template:
    # Query flags are read from the request: Litestar 2.25 double-wraps a sync GET handler that
    # declares query parameters when a POST handler shares its path (the GET then returns a coroutine).
    required = request.query_params.get("required") == "1"
    account_id = request.user.subject_id
    return Template(
        template_name="account/passkeys.html",
        context={
            "active": "security",
            "passkeys": portal.accounts.passkeys(account_id),
            "codes_left": portal.accounts.unused_code_count(account_id),
            "required": required or request.user.restricted,
        },
    )


@post(
    "/account/passkeys/options", opt=during_recovery(access(*SIGNED_IN)), sync_to_thread=True, include_in_schema=False
)
def add_passkey_options(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Response[dict[str, Any]]:
    try:
        return Response(_options(portal.accounts.add_passkey_options(request.auth)))
    except StepUpRequiredError as exc:
        return _problem(str(exc), 403)
    except AccountError as exc:
        return _problem(str(exc))


@post("/account/passkeys", opt=during_recovery(access(*SIGNED_IN)), sync_to_thread=True, include_in_schema=False)
def add_passkey_finish(
    request: Request[Principal, WebSession, Any], data: JSONBody[CeremonyResult], portal: PortalDep
) -> Response[dict[str, str]]:
    try:
        portal.accounts.finish_add_passkey(request.auth, data.challenge_id, json.dumps(data.credential))
    except StepUpRequiredError as exc:
        return _problem(str(exc), 403)
    except AccountError as exc:
        return _problem(str(exc))
    return Response({"redirect": "/account/passkeys?added=1"})


@post(
    "/account/passkeys/{credential_id:str}/rename",
    opt=access(*SIGNED_IN),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def rename_passkey(
    credential_id: FromPath[str],
    request: Request[Principal, WebSession, Any],
    data: URLEncodedBody[RenameForm],
    portal: PortalDep,
) -> Redirect | Template:
    try:
        portal.accounts.rename_passkey(request.user.subject_id, credential_id, data.name)
    except AccountError as exc:
        return _account_error(request, portal, str(exc))
    return Redirect("/account/passkeys", status_code=303)


@post(
    "/account/passkeys/{credential_id:str}/remove",
    opt=access(*SIGNED_IN),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def remove_passkey(
    credential_id: FromPath[str], request: Request[Principal, WebSession, Any], portal: PortalDep
) -> Redirect | Template:
    try:
        portal.accounts.remove_passkey(request.auth, credential_id)
    except AccountError as exc:
        return _account_error(request, portal, str(exc))
    return Redirect("/account/passkeys?removed=1", status_code=303)


def _account_error(request: Request[Principal, WebSession, Any], portal: Any, message: str) -> Template:
    account_id = request.user.subject_id
    return Template(
        template_name="account/passkeys.html",
        status_code=400,
        context={
            "active": "security",
            "passkeys": portal.accounts.passkeys(account_id),
            "error": message,
            "codes_left": portal.accounts.unused_code_count(account_id),
            "required": request.user.restricted,
        },
    )


# ---------------------------------------------------------------------- recovery codes


@get("/account/recovery-codes", opt=access(*SIGNED_IN), sync_to_thread=True, include_in_schema=False)
def recovery_codes_page(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Template:
    welcome = request.query_params.get("welcome") == "1"  # see passkeys_page for why not a parameter
    return Template(
        template_name="account/recovery_codes.html",
        context={
            "active": "security",
            "welcome": welcome,
            "codes": None,
            "codes_left": portal.accounts.unused_code_count(request.user.subject_id),
        },
    )


@post("/account/recovery-codes", opt=access(*SIGNED_IN), sync_to_thread=True, include_in_schema=False)
def create_recovery_codes(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Template:
    try:
        codes = portal.accounts.create_recovery_codes(request.auth)
    except AccountError as exc:
        return Template(
            template_name="account/recovery_codes.html",
            status_code=403,
            context={
                "active": "security",
                "error": str(exc),
                "codes": None,
                "codes_left": portal.accounts.unused_code_count(request.user.subject_id),
            },
        )
    return Template(
        template_name="account/recovery_codes.html",
        context={"active": "security", "codes": codes, "codes_left": len(codes)},
    )


# ---------------------------------------------------------------------- security activity and sessions


@get("/account/security", opt=access(*SIGNED_IN), sync_to_thread=True, include_in_schema=False)
def security_page(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Template:
    account_id = request.user.subject_id
    return Template(
        template_name="account/security.html",
        context={
            "active": "security",
            "activity": portal.accounts.security_activity(account_id),
            "sessions": portal.sessions.live_sessions(account_id),
            "current": request.user.session_handle,
        },
    )


@post(
    "/account/sessions/{handle:str}/end",
    opt=access(*SIGNED_IN),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def end_session(handle: FromPath[str], request: Request[Principal, WebSession, Any], portal: PortalDep) -> Redirect:
    portal.accounts.end_session(request.user.subject_id, handle, current=request.user.session_handle)
    return Redirect("/account/security?ended=1", status_code=303)


@post(
    "/account/sessions/end-others",
    opt=access(*SIGNED_IN),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def end_other_sessions(request: Request[Principal, WebSession, Any], portal: PortalDep) -> Redirect:
    portal.accounts.end_other_sessions(request.user.subject_id, keep=request.user.session_handle)
    return Redirect("/account/security?ended=others", status_code=303)


ROUTES = [
    signin_page,
    signin_options,
    signin_finish,
    recovery_page,
    recovery_signin,
    home_redirect,
    enrol_page,
    enrol_birth_date,
    enrol_options,
    enrol_finish,
    stepup_options,
    stepup_finish,
    session_ping,
    passkeys_page,
    add_passkey_options,
    add_passkey_finish,
    rename_passkey,
    remove_passkey,
    recovery_codes_page,
    create_recovery_codes,
    security_page,
    end_session,
    end_other_sessions,
]
