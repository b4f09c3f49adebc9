"""The current state of a purpose as a FHIR R4 Consent resource (permit/deny by purpose, actor, period)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from portal.consent.models import ConsentPurpose

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESEARCH_CODES = {"HRESCH", "CLINTRCH"}


def consent_resource(
    *,
    consent_id: str,
    patient_id: str,
    purpose: ConsentPurpose,
    granted: bool,
    since: datetime | None,
    policy_url: str,
    controller: str,
    recorded: bool,
) -> dict[str, Any]:
    """``recorded`` is False for an opt-out purpose the patient never answered (the default applies)."""
    scope = "research" if purpose.purpose_of_use in RESEARCH_CODES else "patient-privacy"
    provision: dict[str, Any] = {
        "type": "permit" if granted else "deny",
        "purpose": [{"system": ACT_REASON, "code": purpose.purpose_of_use, "display": purpose.title}],
        "actor": [
            {
                "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
                "reference": {"display": recipient},
            }
            for recipient in purpose.recipient_list
        ],
    }
    if since is not None:
        provision["period"] = {"start": _instant(since)}
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id,
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": scope}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "organization": [{"display": controller}],
        "policy": [{"uri": policy_url}],
        "provision": provision,
    }
    if since is not None:
        resource["dateTime"] = _instant(since)
    if not recorded:
        resource["extension"] = [
            {
                "url": "https://portal.example/fhir/StructureDefinition/consent-default",
                "valueString": f"{purpose.mode} purpose: no choice recorded, the default applies",
            }
        ]
    return resource


def _instant(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
