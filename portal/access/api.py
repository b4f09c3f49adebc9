"""POST /api/v1/access-events: one FHIR AuditEvent (JSON) or an NDJSON batch of up to 10,000."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Request, Response, post

from portal.access.service import MAX_BATCH
from portal.security.guards import Rule, access
from portal.security.sessions import Principal
from portal.web.deps import PortalDep
from portal.web.errors import error_response

NDJSON_TYPES = ("application/x-ndjson", "application/fhir+ndjson", "application/ndjson")
BATCH_BODY_BYTES = 64 * 1024 * 1024


@post(
    "/access-events",
    opt=access(Rule.integration, scopes=("access-events:write",)),
    request_max_body_size=BATCH_BODY_BYTES,
    summary="Record accesses to patients' records (IHE BALP AuditEvents)",
    description="A single AuditEvent as JSON, or NDJSON with one AuditEvent per line (at most 10,000). "
    "Each line is validated on its own: the response lists accepted, duplicate and rejected lines with "
    "the reason. Sending the same event (same id) again is harmless.",
)
async def post_access_events(request: Request[Principal, Any, Any], portal: PortalDep) -> Response[Any]:
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    raw_lines = body.splitlines() if content_type in NDJSON_TYPES else [body]
    numbered = [(number, raw) for number, raw in enumerate(raw_lines, start=1) if raw.strip()]
    if len(numbered) > MAX_BATCH:
        return error_response(request, 413, f"a batch holds at most {MAX_BATCH} events")
    if not numbered:
        return error_response(request, 400, "the body holds no AuditEvent")
    result = await to_thread.run_sync(
        lambda: portal.access.ingest_lines(
            [raw for _number, raw in numbered], sender=f"integration:{request.user.subject_id}"
        )
    )
    lines = [
        {"line": numbered[line.index][0], "status": line.status, "reason": line.reason, "id": line.id}
        for line in result.lines
    ]
    summary = {status: result.count(status) for status in ("accepted", "duplicate", "rejected")}
    status_code = 422 if summary["rejected"] and not (summary["accepted"] or summary["duplicate"]) else 200
    return Response({**summary, "lines": lines}, status_code=status_code)
