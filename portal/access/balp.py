"""Reading FHIR R4 AuditEvents shaped by IHE Basic Audit Log Patterns (BALP) into access facts.

Supported patterns: PatientRead, Query, Create, Update, Delete and PrivacyDisclosure. A line that
is not valid FHIR, or lacks what a patient needs to understand the access, is refused with the
reason; nothing is guessed. Every line is validated as an R4B AuditEvent: by the compiled check
of portal.access.fhir_check when it passes the line (most do, ~20x faster), else by fhir.resources.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import pydantic
from fhir.resources.R4B.auditevent import AuditEvent

from portal.access.fhir_check import audit_event_passes
from portal.records.categories import category_for

RESTFUL = {
    "read": "read",
    "vread": "read",
    "search-type": "query",
    "search": "query",
    "search-system": "query",
    "create": "create",
    "update": "update",
    "patch": "update",
    "delete": "delete",
}
ACTION_CODES = {"R": "read", "E": "query", "C": "create", "U": "update", "D": "delete"}
DISCLOSE_CODES = {"disclose", "ITI-62", "110106"}  # ISO 21089 disclose, and "Export" (DICOM)
EMERGENCY_CODES = {"ETREAT", "BTG"}
HUMAN_AGENT_CODES = {"humanuser", "110153", "110154"}
PATIENT_ROLE = "1"


class BalpError(ValueError):
    """Why an AuditEvent line was refused."""


class AccessFacts(NamedTuple):
    """What a patient is told about one access. A named tuple: ingest makes one per event, in a third of a
    frozen dataclass's time."""

    event_id: str
    occurred_at: datetime
    action: str
    purpose: str
    emergency: bool
    break_glass_reason: str | None
    agent_kind: str
    person: str | None
    person_id: str | None
    role: str | None
    organisation: str
    department: str | None
    data_category: str | None
    what: str | None
    recipient: str | None
    patient_identifier: tuple[str, str]  # (system, value)


def parse_audit_event(resource: dict[str, Any]) -> AccessFacts:
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        raise BalpError("not a FHIR AuditEvent")
    if not audit_event_passes(resource):
        _validate_with_fhir_resources(resource)
    event_id = resource.get("id")
    if not event_id:
        raise BalpError("the AuditEvent needs an id (it makes sending it twice harmless)")
    requestor = _requestor(resource)
    purpose_codes = _codes(resource.get("purposeOfEvent", [])) + _codes(requestor.get("purposeOfUse", []))
    emergency = not EMERGENCY_CODES.isdisjoint(purpose_codes)
    is_person = _is_person(requestor)
    who = requestor.get("who", {})
    others = _non_patient_entities(resource)
    return AccessFacts(
        event_id=str(event_id),
        occurred_at=_instant(resource["recorded"]),
        action=_action(resource),
        purpose=next((c for c in purpose_codes if c != "BTG"), "ETREAT" if emergency else "unknown"),
        emergency=emergency,
        break_glass_reason=_break_glass_reason(resource, requestor) if emergency else None,
        agent_kind="person" if is_person else "system",
        person=who.get("display") if is_person else None,
        person_id=who.get("identifier", {}).get("value"),
        role=_role(requestor),
        organisation=_organisation(resource),
        department=resource.get("source", {}).get("site") or requestor.get("location", {}).get("display"),
        data_category=_data_category(others),
        what=_what(others),
        recipient=_recipient(resource),
        patient_identifier=_patient_identifier(resource),
    )


def _validate_with_fhir_resources(resource: dict[str, Any]) -> None:
    """The full R4B validation, for what the compiled check did not pass: it decides, and says why."""
    try:
        AuditEvent.model_validate(resource)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(resource)"
        raise BalpError(f"invalid AuditEvent: {where}: {first['msg']}") from None
    except (KeyError, TypeError) as exc:
        # fhir.resources fails this way on a contained resource of an unknown type: still just a bad line.
        raise BalpError(f"invalid AuditEvent: unreadable ({type(exc).__name__}: {exc})") from None


def _codes(concepts: list[dict[str, Any]]) -> list[str]:
    return [coding["code"] for concept in concepts for coding in concept.get("coding", []) if "code" in coding]


def _requestor(resource: dict[str, Any]) -> dict[str, Any]:
    agents = resource.get("agent", [])
    chosen = next((a for a in agents if a.get("requestor")), agents[0] if agents else None)
    if chosen is None:
        raise BalpError("the AuditEvent names no agent (who accessed the record)")
    return cast(dict[str, Any], chosen)


def _is_person(agent: dict[str, Any]) -> bool:
    codes = {c.get("code") for c in agent.get("type", {}).get("coding", [])}
    reference = str(agent.get("who", {}).get("reference", ""))
    return bool(codes & HUMAN_AGENT_CODES) or reference.startswith(("Practitioner/", "PractitionerRole/"))


def _role(agent: dict[str, Any]) -> str | None:
    for role in agent.get("role", []):
        if role.get("text"):
            return str(role["text"])
        for coding in role.get("coding", []):
            if coding.get("display"):
                return str(coding["display"])
    return None


def _action(resource: dict[str, Any]) -> str:
    type_code = resource.get("type", {}).get("code")
    subtypes = [s.get("code") for s in resource.get("subtype", [])]
    if type_code in DISCLOSE_CODES or DISCLOSE_CODES & set(subtypes):
        return "disclose"
    for code in subtypes:
        if code in RESTFUL:
            return RESTFUL[code]
    if resource.get("action") in ACTION_CODES:
        return ACTION_CODES[resource["action"]]
    raise BalpError("the AuditEvent says neither its subtype (read, search, create, ...) nor its action")


def _organisation(resource: dict[str, Any]) -> str:
    for agent in resource.get("agent", []):
        who = agent.get("who", {})
        if str(who.get("reference", "")).startswith("Organization/") and who.get("display"):
            return str(who["display"])
    observer = resource.get("source", {}).get("observer", {})
    if observer.get("display"):
        return str(observer["display"])
    raise BalpError("the AuditEvent does not say which organisation accessed the record (source.observer.display)")


def _break_glass_reason(resource: dict[str, Any], agent: dict[str, Any]) -> str | None:
    for concept in [*agent.get("purposeOfUse", []), *resource.get("purposeOfEvent", [])]:
        if concept.get("text"):
            return str(concept["text"])
    return None


def _patient_identifier(resource: dict[str, Any]) -> tuple[str, str]:
    for entity in resource.get("entity", []):
        is_patient = entity.get("role", {}).get("code") == PATIENT_ROLE or str(
            entity.get("what", {}).get("reference", "")
        ).startswith("Patient/")
        identifier = entity.get("what", {}).get("identifier", {})
        if is_patient and identifier.get("value"):
            return str(identifier.get("system", "")), str(identifier["value"])
    raise BalpError("the AuditEvent names no patient by identifier (entity with role 1 and what.identifier)")


def _non_patient_entities(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in resource.get("entity", [])
        if e.get("role", {}).get("code") != PATIENT_ROLE
        and not str(e.get("what", {}).get("reference", "")).startswith("Patient/")
    ]


def _data_category(entities: list[dict[str, Any]]) -> str | None:
    for entity in entities:
        reference = str(entity.get("what", {}).get("reference", ""))
        if "/" in reference and (category := category_for(reference.split("/", maxsplit=1)[0])):
            return category
    return None


def _what(entities: list[dict[str, Any]]) -> str | None:
    for entity in entities:
        if entity.get("description"):
            return str(entity["description"])
        if entity.get("name"):
            return str(entity["name"])
    return None


def _recipient(resource: dict[str, Any]) -> str | None:
    for agent in resource.get("agent", []):
        codes = {c.get("code") for c in agent.get("type", {}).get("coding", [])}
        if "IRCP" in codes:
            return str(agent.get("who", {}).get("display") or "a recipient")
    return None


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise BalpError("recorded must carry a time zone")
    return parsed.astimezone(UTC)
