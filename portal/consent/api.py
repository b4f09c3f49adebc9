"""GET /api/v1/consent/decision: may this patient's data be used for this purpose (and recipient)?"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromQuery

from portal.consent.service import DecisionInputError
from portal.security.guards import Rule, access
from portal.security.sessions import Principal
from portal.web.deps import PortalDep
from portal.web.errors import error_response


@get(
    "/consent/decision",
    opt=access(Rule.integration, scopes=("consent:read",)),
    summary="Consent decision for one patient, purpose and recipient",
    description="Answers permit or deny with the reason and the FHIR Consent reference; every call is audited.",
)
async def consent_decision(
    request: Request[Principal, Any, Any],
    portal: PortalDep,
    patient: FromQuery[str] = "",
    purpose: FromQuery[str] = "",
    recipient: FromQuery[str | None] = None,
) -> Response[Any]:
    try:
        decision = await portal.consent.decide_async(
            patient=patient, purpose=purpose, recipient=recipient, actor=f"integration:{request.user.subject_id}"
        )
    except DecisionInputError as exc:
        return error_response(request, 400, str(exc), errors=[{"field": exc.field, "message": str(exc)}])
    return Response(
        {
            "decision": decision.decision,
            "reason": decision.reason,
            "purpose": decision.purpose,
            "noticeVersion": decision.notice_version,
            "consent": decision.consent_reference,
        }
    )
