"""IHE BALP AuditEvents for tests and benchmarks: a person who looked at a patient's lab results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from portal.records.synthetic import MRN_SYSTEM

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def balp_event(
    event_id: str,
    mrn: str,
    recorded: str | datetime = "2026-10-05T10:15:00Z",
    *,
    subtype: str = "read",
    purpose: str = "TREAT",
    person: str = "Dr A. Jones",
    role: str = "Cardiologist",
    org: str = "St Example Hospital",
    site: str = "Ward 4",
    btg: str | None = None,
) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser"}
            ]
        },
        "who": {"identifier": {"value": person.lower().replace(" ", "-")}, "display": person},
        "role": [{"text": role}],
        "requestor": True,
    }
    if btg:
        agent["purposeOfUse"] = [{"coding": [{"system": ACT_REASON, "code": "BTG"}], "text": btg}]
    when = recorded.isoformat().replace("+00:00", "Z") if isinstance(recorded, datetime) else recorded
    return {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": "R",
        "recorded": when,
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose}]}],
        "agent": [agent],
        "source": {"site": site, "observer": {"display": org}},
        "entity": [
            {
                "what": {"identifier": {"system": MRN_SYSTEM, "value": mrn}},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            },
            {"what": {"reference": "DiagnosticReport/lab-1"}, "description": "your lab results"},
        ],
    }
