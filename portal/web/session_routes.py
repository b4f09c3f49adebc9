"""Signing out: ends the current server-side session."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.response import Redirect

from portal.security.guards import Rule, access, during_recovery
from portal.security.sessions import WebSession, clear_session_cookie
from portal.web.deps import PortalDep


@post(
    "/signout",
    opt=during_recovery(access(Rule.patient, Rule.officer, Rule.regulator)),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def sign_out(request: Request[Any, WebSession, Any], portal: PortalDep) -> Redirect:
    portal.accounts.sign_out(request.auth.subject_id, request.auth.handle)
    return Redirect("/", status_code=303, cookies=[clear_session_cookie()])
