"""Signing out: ends the current server-side session."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.response import Redirect

from portal.security.guards import Rule, access
from portal.security.sessions import WebSession, clear_session_cookie
from portal.web.deps import PortalDep


@post(
    "/signout",
    opt=access(Rule.patient, Rule.officer, Rule.regulator),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=303,
)
def sign_out(request: Request[Any, WebSession, Any], portal: PortalDep) -> Redirect:
    current = request.auth
    with portal.db.write() as session:
        portal.sessions.revoke(session, subject_id=current.subject_id, handle=current.handle, reason="signed_out")
    return Redirect("/", status_code=303, cookies=[clear_session_cookie()])
