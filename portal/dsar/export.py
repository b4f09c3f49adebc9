"""The portable export: a ZIP with a FHIR R4 collection Bundle, CSV per resource type, an accessible
PDF summary and a signed manifest of SHA-256 hashes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.access.service import AccessLog, TimelineEntry, TimelineFilter
from portal.consent.service import ConsentService
from portal.db import new_id
from portal.dsar.signed import key_id, public_key_pem, sign_bytes
from portal.pdf import PdfRenderer
from portal.records.categories import BY_CODE
from portal.records.service import RecordStore, StoredResource

PDF_ROWS_PER_TYPE = 25
PDF_ACCESS_ROWS = 50
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.jws"
DATE_FIELDS = (
    "effectiveDateTime",
    "effectivePeriod",
    "period",
    "onsetDateTime",
    "recordedDate",
    "authoredOn",
    "occurrenceDateTime",
    "performedDateTime",
    "performedPeriod",
    "issued",
    "date",
    "created",
    "billablePeriod",
)
AUDIT_ACTION = {"read": "R", "query": "E", "create": "C", "update": "U", "delete": "D", "disclose": "R"}
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PSEUDONYM_SYSTEM = "urn:portal:patient-pseudonym"
_JSON_BATCH = 8192  # encoder pieces joined and encoded at a time (see _json_bytes)

Progress = Callable[[int, str], None]


@dataclass(frozen=True)
class Scope:
    """What the patient asked for: all categories or some, and optionally a date range (inclusive)."""

    categories: tuple[str, ...] | None = None
    start: date | None = None
    end: date | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scope:
        categories = data.get("categories")
        return cls(
            categories=tuple(categories) if categories is not None else None,
            start=date.fromisoformat(data["start"]) if data.get("start") else None,
            end=date.fromisoformat(data["end"]) if data.get("end") else None,
        )

    def wants(self, category: str) -> bool:
        return self.categories is None or category in self.categories

    def covers(self, day: date | None) -> bool:
        """Undated resources (the Patient, organisations) are always in."""
        if day is None:
            return True
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    def describe(self) -> str:
        what = "all your data" if self.categories is None else ", ".join(BY_CODE[c].title for c in self.categories)
        if self.start or self.end:
            what += f", from {self.start or 'the beginning'} to {self.end or 'today'}"
        return what


@dataclass
class BuiltExport:
    data: bytes
    files: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ExportBuilder:
    records: RecordStore
    access: AccessLog
    consent: ConsentService
    pdf: PdfRenderer
    signing_key: Callable[[], Ed25519PrivateKey]
    origin: str
    controller: str

    def build(self, request_id: str, patient_id: str, scope: Scope, progress: Progress) -> BuiltExport:
        now = datetime.now(UTC)
        progress(10, "Collecting your records")
        stored = self.records.read(
            patient_id,
            actor="system:export",
            role="system",
            purpose="PATRQT",
            categories=scope.categories,
            include_restricted=True,
        )
        resources = [s.resource for s in stored if s.resource is not None and scope.covers(resource_date(s.resource))]
        patient_ref = _patient_reference(stored)
        progress(35, "Adding your consents and access history")
        if scope.wants("consent"):
            resources += [
                self._consent(patient_id, view.purpose.code, patient_ref) for view in self.consent.overview(patient_id)
            ]
        if scope.wants("access_log"):
            window = TimelineFilter(
                start=_day_start(scope.start) if scope.start else None,
                end=_day_start(scope.end) + timedelta(days=1) if scope.end else None,
            )
            resources += [audit_event(entry, patient_ref) for entry in self.access.all_entries(patient_id, window)]
        resources.append(
            provenance(
                {"reference": patient_ref},
                operation="EXECUTE",
                text=f"Export of the patient's data at their request {request_id}",
                controller=self.controller,
                now=now,
            )
        )
        bundle = self._bundle(request_id, resources, now)
        counts = dict(Counter(r["resourceType"] for r in resources))
        progress(55, "Writing spreadsheets")
        files: dict[str, bytes] = {"fhir/bundle.json": _json_bytes(bundle)}
        for resource_type, rows in sorted(_by_type(resources).items()):
            files[f"csv/{resource_type}.csv"] = to_csv(rows)
        progress(70, "Writing the PDF summary")
        files["summary.pdf"] = self.pdf.render(
            "export_summary.html", **self.summary_context(resources, counts, scope, now, erased=_erased(stored))
        )
        files["README.txt"] = _readme(self.controller, now).encode()
        progress(90, "Signing and packing")
        return self._pack(files, request_id, patient_id, now, counts)

    def summary_context(
        self, resources: list[dict[str, Any]], counts: dict[str, int], scope: Scope, now: datetime, erased: list[str]
    ) -> dict[str, Any]:
        patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
        groups = {
            resource_type: sorted((summary_row(r) for r in rows), key=lambda row: row[0], reverse=True)
            for resource_type, rows in sorted(_by_type(resources).items())
            if resource_type not in {"Patient", "AuditEvent", "Provenance"}
        }
        accesses = [summary_row(r) for r in resources if r["resourceType"] == "AuditEvent"]
        return {
            "controller": self.controller,
            "generated": now,
            "name": _name(patient),
            "birth_date": (patient or {}).get("birthDate"),
            "scope": scope.describe(),
            "counts": counts,
            "groups": groups,
            "accesses": accesses,
            "limit": PDF_ROWS_PER_TYPE,
            "access_limit": PDF_ACCESS_ROWS,
            "erased": erased,
        }

    def _consent(self, patient_id: str, code: str, patient_ref: str) -> dict[str, Any]:
        resource = self.consent.fhir_consent(patient_id, code)
        resource["patient"] = {"reference": patient_ref}
        return resource

    def _bundle(self, request_id: str, resources: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "id": request_id,
            "type": "collection",
            "timestamp": _instant(now),
            "entry": [
                {"fullUrl": f"{self.origin}/fhir/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
            ],
        }

    def _pack(
        self, files: dict[str, bytes], request_id: str, patient_id: str, now: datetime, counts: dict[str, int]
    ) -> BuiltExport:
        key = self.signing_key()
        public = key.public_key()
        files["public-key.pem"] = public_key_pem(public)
        manifest = {
            "format": "portal-export/1",
            "request": request_id,
            "subject": patient_id,
            "created": _instant(now),
            "issuer": self.controller,
            "key_id": key_id(public),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
            },
        }
        files[MANIFEST] = _json_bytes(manifest)
        files[SIGNATURE] = sign_bytes(files[MANIFEST], key).encode()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            for name, data in files.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=now.timetuple()[:6]), data, zipfile.ZIP_DEFLATED)
        return BuiltExport(buffer.getvalue(), {name: len(data) for name, data in files.items()}, counts)


# ---------------------------------------------------------------------- FHIR pieces


def audit_event(entry: TimelineEntry, patient_ref: str) -> dict[str, Any]:
    """An access from the patient's history as a FHIR R4 AuditEvent (BALP-shaped, as it was received)."""
    details = entry.details or {}
    who = details.get("person") or details.get("organisation") or "(erased)"
    agent: dict[str, Any] = {"who": {"display": who}, "requestor": True}
    if details.get("role"):
        agent["role"] = [{"text": details["role"]}]
    organisation = details.get("organisation") or "(erased)"
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry.id,
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "action": AUDIT_ACTION.get(entry.action, "R"),
        "recorded": _instant(entry.occurred_at),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": entry.purpose}]}],
        "agent": [agent],
        "source": {"site": organisation, "observer": {"display": organisation}},
        "entity": [{"what": {"reference": patient_ref}}],
    }
    if entry.sentence:
        resource["outcomeDesc"] = entry.sentence
    return resource


def provenance(target: dict[str, Any], *, operation: str, text: str, controller: str, now: datetime) -> dict[str, Any]:
    """A FHIR R4 Provenance saying what the portal did to the patient's data, at their request."""
    return {
        "resourceType": "Provenance",
        "id": new_id(),
        "target": [target],
        "recorded": _instant(now),
        "reason": [{"coding": [{"system": ACT_REASON, "code": "PATRQT", "display": "patient requested"}]}],
        "activity": {"coding": [{"system": DATA_OPERATION, "code": operation}], "text": text},
        "agent": [{"who": {"display": f"{controller} privacy portal"}}],
    }


def resource_date(resource: Mapping[str, Any]) -> date | None:
    for name in DATE_FIELDS:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start") or value.get("end")
        if isinstance(value, str) and len(value) >= 10:
            try:
                return date.fromisoformat(value[:10])
            except ValueError:
                continue
    return None


def summary_row(resource: Mapping[str, Any]) -> tuple[str, str]:
    """(date, plain text) for the PDF: the resource's date and the most readable label it has."""
    day = resource_date(resource)
    if resource.get("resourceType") == "AuditEvent":
        return (str(resource.get("recorded", ""))[:16].replace("T", " "), str(resource.get("outcomeDesc", "")))
    return (day.isoformat() if day else "", _label(resource))


def _label(resource: Mapping[str, Any]) -> str:
    for name in ("code", "vaccineCode", "medicationCodeableConcept", "type", "class", "category"):
        concept = resource.get(name)
        if isinstance(concept, list):
            concept = concept[0] if concept else None
        if isinstance(concept, dict):
            if concept.get("text"):
                return str(concept["text"])
            codings = concept.get("coding") or []
            if codings and codings[0].get("display"):
                return str(codings[0]["display"])
    return str(resource.get("name") or resource.get("description") or resource.get("status") or "")


# ---------------------------------------------------------------------- CSV


def to_csv(resources: list[dict[str, Any]]) -> bytes:
    """One row per resource; nested fields become dotted columns (code.coding.0.display)."""
    rows = [dict(_flatten(resource)) for resource in resources]
    columns = sorted({column for row in rows for column in row}, key=lambda c: (c != "id", c))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _csv_safe(value) for column, value in row.items()})
    return buffer.getvalue().encode("utf-8-sig")


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _flatten(value, f"{prefix}.{index}")
    else:
        yield prefix, "" if node is None else str(node)


def _csv_safe(value: str) -> str:
    # A cell starting with = + - @ runs as a formula in spreadsheets (CSV injection): quote it.
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} and not _is_number(value) else value


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- helpers


def _by_type(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resource in resources:
        groups[resource["resourceType"]].append(resource)
    return groups


def _patient_reference(stored: list[StoredResource]) -> str:
    for item in stored:
        if item.resource_type == "Patient":
            return f"Patient/{item.id}"
    return "Patient/unknown"


def _erased(stored: list[StoredResource]) -> list[str]:
    return sorted({BY_CODE[s.category].title for s in stored if s.erased})


def _name(patient: Mapping[str, Any] | None) -> str:
    for name in (patient or {}).get("name", []):
        given = " ".join(name.get("given", []))
        return f"{given} {name.get('family', '')}".strip()
    return ""


def _instant(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _json_bytes(value: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False, indent=1).encode()``, byte for byte, with a lower peak.

    With ``indent`` the json module encodes in pure Python, yielding millions of small strings that
    ``dumps`` holds all at once before joining them (about 200 MB for the bundle of a patient with
    5,000 resources and 20,000 accesses, next to 31 MB of JSON); joined and encoded in batches, the
    peak stays near twice the output (issue #7: export within 500 MB).
    """
    parts: list[bytes] = []
    pending: list[str] = []
    for chunk in json.JSONEncoder(ensure_ascii=False, indent=1).iterencode(value):
        pending.append(chunk)
        if len(pending) >= _JSON_BATCH:
            parts.append("".join(pending).encode())
            pending.clear()
    parts.append("".join(pending).encode())
    return b"".join(parts)


def _readme(controller: str, now: datetime) -> str:
    return f"""Your data from {controller}, exported {_instant(now)}.

fhir/bundle.json   Everything we hold about you as a FHIR R4 Bundle (type "collection"): your record,
                   your consent choices (Consent), who accessed your record (AuditEvent) and a
                   Provenance saying how this export was made. Other health apps can import it.
csv/*.csv          The same records as spreadsheets, one file per kind of record.
summary.pdf        A readable summary. Long lists are cut short; the CSV files hold everything.
manifest.json      The SHA-256 hash of every file above.
manifest.json.jws  Our signature over manifest.json (JWS, EdDSA/Ed25519).
public-key.pem     The public key that checks the signature.

To check nothing was changed: verify manifest.json.jws with public-key.pem (its payload must be
exactly manifest.json), then compare each file's SHA-256 with the manifest.
"""
