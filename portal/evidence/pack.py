"""The files of an evidence pack: request log, audit events, ledger proofs, and the signed ZIP.

Everything here is pure assembly from data the service gathered; the signing key and the
ledger are passed in, so the layout is easy to read in one place and to test.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.access.cases import CaseView
from portal.accounts.models import StepUpEvidence
from portal.dsar.lifecycle import LABELS, Status
from portal.dsar.models import DataRequest
from portal.dsar.service import RequestView
from portal.dsar.signed import key_id, public_key_pem, sign_bytes
from portal.evidence import verify_pack
from portal.security.crypto import public_key_fingerprint

FORMAT = "portal-evidence-pack/1"
VERIFIER_SOURCE = Path(verify_pack.__file__)
VERIFY_GUIDE = Path(__file__).with_name("VERIFY.md")
# Only decisions keep their words in a pack; patients' messages stay in the portal (minimisation).
REASON_ACTIONS = frozenset({"deny", "extend"})


@dataclass(frozen=True)
class LedgerEvidence:
    """What the pack says about the ledger: entries, proofs and checkpoints, ready to write."""

    entries: list[bytes]
    inclusion: dict[int, list[bytes]]
    tree_size: int
    checkpoint_note: str
    verifier_key: str
    previous_note: str | None
    consistency: list[bytes] | None
    previous_size: int | None


def iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def closed_at(request: DataRequest) -> datetime | None:
    """When the request was answered: completed, or declined."""
    if request.status == Status.denied:
        return request.decided_at
    return request.completed_at


def deadline_outcome(request: DataRequest, now: datetime) -> str:
    """met | missed | open | overdue | not applicable (cancelled)."""
    if request.status == Status.cancelled:
        return "not applicable"
    answered = closed_at(request)
    if answered is not None:
        return "met" if answered <= request.due_at else "missed"
    return "overdue" if now > request.due_at else "open"


def stepup_record(evidence: StepUpEvidence | None) -> dict[str, Any] | None:
    """A step-up as identity-verification evidence: when, which passkey, user verification, ledger entry."""
    if evidence is None:
        return None
    return {
        "evidence": evidence.id,
        "account": evidence.account_id,
        "at": iso(evidence.created_at),
        "method": "passkey step-up (WebAuthn assertion)",
        "credential": evidence.credential_id,
        "user_verified": evidence.user_verified,
        "assertion_sha256": hashlib.sha256(evidence.assertion.encode()).hexdigest(),
        "ledger_seq": evidence.ledger_seq,
    }


def request_record(
    view: RequestView,
    *,
    approvals: list[tuple[str, str | None, datetime, StepUpEvidence | None]],
    staff_name: Callable[[str], str | None],
    now: datetime,
) -> dict[str, Any]:
    """One request's log: every timestamp, who decided what and why, deadlines, plan, sources searched."""
    request = view.request
    certificate = (view.certificate or {}).get("document", {})
    return {
        "id": request.id,
        "kind": request.kind,
        "status": request.status,
        "status_label": LABELS[Status(request.status)],
        "subject": request.patient_id,
        "submitted_at": iso(request.submitted_at),
        "decided_at": iso(request.decided_at),
        "completed_at": iso(request.completed_at),
        "deadlines": {
            "gdpr_due_at": iso(request.gdpr_due_at),
            "hipaa_due_at": iso(request.hipaa_due_at),
            "due_at": iso(request.due_at),
            "stricter_law": view.deadlines.stricter_law,
            "extended": bool(request.extended),
            "paused_seconds": request.paused_seconds,
            "outcome": deadline_outcome(request, now),
        },
        "auto_approved": bool(request.auto_approved),
        "identity_verification": stepup_record(view.evidence),
        "approvals": [
            {"officer": officer, "name": name, "at": iso(at), "stepup": stepup_record(evidence)}
            for officer, name, at, evidence in approvals
        ],
        "timeline": [
            {
                "at": iso(item.at),
                "actor": item.actor,
                "actor_name": _actor_name(item.actor, staff_name),
                "action": item.action,
                "from_status": item.from_status,
                "to_status": item.to_status,
                "reason": item.text if item.action in REASON_ACTIONS else None,
                "message_withheld": item.text is not None and item.action not in REASON_ACTIONS,
            }
            for item in view.timeline
        ],
        "plan": [
            {
                "category": item.category,
                "title": item.title,
                "step": item.step.value,
                "legal_basis": item.basis,
                "retain_until": item.retain_until.isoformat() if item.retain_until else None,
            }
            for item in view.plan
        ],
        "sources_searched": certificate.get("verification", {}).get("checks", []),
        "deletion_certificate": f"certificates/{request.id}.json" if view.certificate else None,
    }


def case_record(view: CaseView, staff_name: Callable[[str], str | None]) -> dict[str, Any]:
    """An access dispute: the questioned access (what, not who), the steps, and the finding with its words."""
    case = view.case
    return {
        "id": case.id,
        "subject": case.patient_id,
        "status": case.status,
        "finding": case.finding,
        "opened_at": iso(case.opened_at),
        "due_at": iso(case.due_at),
        "closed_at": iso(case.closed_at),
        "deadline_outcome": ("met" if case.closed_at <= case.due_at else "missed") if case.closed_at else "open",
        "access": {
            "occurred_at": iso(view.access.occurred_at),
            "action": view.access.action,
            "purpose": view.access.purpose,
            "emergency": view.access.emergency,
        },
        "steps": [
            {
                "at": iso(message.at),
                "actor": message.author,
                "actor_name": _actor_name(message.author, staff_name),
                "kind": message.kind,
                "explanation": message.text if message.kind == "finding" else None,
            }
            for message in view.messages
        ],
    }


def _actor_name(actor: str, staff_name: Callable[[str], str | None]) -> str | None:
    kind, _, ident = actor.partition(":")
    return staff_name(ident) if kind == "staff" else None


def request_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request log flattened for CSV: one row per timeline step."""
    return [
        {
            "id": f"{record['id']}#{index}",
            "request": record["id"],
            "kind": record["kind"],
            "subject": record["subject"],
            "due_at": record["deadlines"]["due_at"],
            "deadline_outcome": record["deadlines"]["outcome"],
            **step,
        }
        for record in records
        for index, step in enumerate(record["timeline"])
    ]


def audit_event(entry: dict[str, Any], origin: str) -> dict[str, Any]:
    """A ledger entry as a FHIR R4 AuditEvent: pseudonymous ids only, as the ledger holds them."""
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"ledger-{entry['seq']}",
        "type": {"system": f"{origin}/fhir/CodeSystem/ledger-action", "code": entry["action"]},
        "action": "E",
        "recorded": entry["time"],
        "outcome": "0" if entry.get("outcome") == "success" else "4",
        "agent": [
            {
                "who": {"identifier": {"system": f"{origin}/actors", "value": entry["actor"]}},
                "requestor": True,
                **({"role": [{"text": entry["role"]}]} if entry.get("role") else {}),
            }
        ],
        "source": {"observer": {"display": f"{origin} audit ledger"}},
        "entity": [{"what": {"identifier": {"system": f"{origin}/ledger", "value": str(entry["seq"])}}}],
    }
    if entry.get("payload_sha256"):
        resource["entity"][0]["detail"] = [{"type": "payload-sha256", "valueString": entry["payload_sha256"]}]
    if entry.get("purpose"):
        resource["purposeOfEvent"] = [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": entry["purpose"]}]}
        ]
    if entry.get("subject"):
        resource["entity"].append(
            {
                "what": {"identifier": {"system": f"{origin}/subjects", "value": entry["subject"]}},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        )
    if entry.get("object"):
        resource["entity"].append({"what": {"identifier": {"system": f"{origin}/objects", "value": entry["object"]}}})
    return resource


def ledger_files(ledger: LedgerEvidence, origin: str) -> dict[str, bytes]:
    """entries.ndjson holds each entry's exact bytes, so a verifier recomputes its leaf hash itself."""
    files = {
        "audit-events.ndjson": _ndjson(audit_event(json.loads(entry), origin) for entry in ledger.entries),
        verify_pack.ENTRIES: b"".join(entry + b"\n" for entry in ledger.entries),
        verify_pack.PROOFS: json_bytes(
            {
                "tree_size": ledger.tree_size,
                "inclusion": {
                    str(seq): [node.hex() for node in path] for seq, path in sorted(ledger.inclusion.items())
                },
                "consistency": None
                if ledger.consistency is None
                else {
                    "from_size": ledger.previous_size,
                    "to_size": ledger.tree_size,
                    "proof": [node.hex() for node in ledger.consistency],
                },
            }
        ),
        verify_pack.CHECKPOINT: ledger.checkpoint_note.encode(),
        verify_pack.VERIFIER_KEY: (ledger.verifier_key + "\n").encode(),
    }
    if ledger.previous_note is not None and ledger.consistency is not None:
        files[verify_pack.PREVIOUS_CHECKPOINT] = ledger.previous_note.encode()
    return files


def assemble(files: dict[str, bytes], key: Ed25519PrivateKey, meta: dict[str, Any], now: datetime) -> bytes:
    """Add the verifier, its guide and the key, then the manifest of every file and its signature."""
    public = key.public_key()
    fingerprint = public_key_fingerprint(public)
    files = {
        **files,
        "verify.py": VERIFIER_SOURCE.read_bytes(),
        "VERIFY.md": VERIFY_GUIDE.read_bytes(),
        verify_pack.PUBLIC_KEY: public_key_pem(public),
        "public-key-fingerprint.txt": (fingerprint + "\n").encode(),
    }
    manifest = {
        "format": FORMAT,
        **meta,
        "created": iso(now),
        "key_id": key_id(public),
        "public_key_fingerprint": fingerprint,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    files[verify_pack.MANIFEST] = json_bytes(manifest)
    files[verify_pack.SIGNATURE] = sign_bytes(files[verify_pack.MANIFEST], key).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=now.timetuple()[:6]), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True).encode() + b"\n"


def _ndjson(items: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for item in items)
