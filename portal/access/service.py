"""The access log: ingest AuditEvents from other systems, record the portal's own reads, and
answer a patient's "who looked at my record, and why?".

Ingest is all or nothing per batch for what is accepted: good lines are stored in one
transaction with their ledger entries; bad lines are reported with the reason and never make a
good one fail. A line already stored (same sender and event id) is a harmless duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.access.balp import AccessFacts, BalpError, parse_audit_event
from portal.access.models import AccessEvent
from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, new_id, utcnow
from portal.records.service import RecordStore
from portal.security.crypto import FieldContext, decrypt_field, encrypt_field
from portal.security.keystore import KeyDestroyedError, KeyStore

MAX_BATCH = 10_000
CATEGORY = "access_log"
PAGE_SIZE = 25
ACTIONS = ("read", "query", "create", "update", "delete", "disclose")

PURPOSE_WORDS = {
    "TREAT": "for your treatment",
    "ETREAT": "for emergency treatment",
    "HPAYMT": "for payment",
    "HOPERAT": "for the running of the service",
    "PATRQT": "because you asked",
    "HRESCH": "for research",
    "PATADMIN": "for patient administration",
    "PUBHLTH": "for public health",
    "HMARKT": "for marketing",
    "LEGAL": "for legal reasons",
    "FAMRQT": "at your family's request",
    "CLINTRCH": "for a clinical trial",
}
ACTION_WORDS = {
    "read": "viewed",
    "query": "searched",
    "create": "added to",
    "update": "changed",
    "delete": "deleted from",
    "disclose": "shared",
}
CATEGORY_WORDS = {
    "clinical": "your clinical record",
    "medications": "your medications",
    "documents": "your documents and letters",
    "demographics": "your contact details",
    "billing": "your billing details",
    "consent": "your consent records",
    "access_log": "your access history",
}


@dataclass
class LineResult:
    index: int
    status: str  # accepted | duplicate | rejected
    reason: str | None = None
    id: str | None = None


@dataclass
class IngestResult:
    lines: list[LineResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for line in self.lines if line.status == status)


@dataclass(frozen=True)
class TimelineFilter:
    start: datetime | None = None
    end: datetime | None = None
    organisation: str | None = None
    role: str | None = None
    action: str | None = None
    purpose: str | None = None
    emergency_only: bool = False
    agent_kind: str | None = None  # person | system


@dataclass(frozen=True)
class TimelineEntry:
    id: str
    occurred_at: datetime
    action: str
    purpose: str
    emergency: bool
    agent_kind: str
    origin: str
    details: dict[str, Any] | None  # None once the access log was erased
    sentence: str


class AccessLog:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        records: RecordStore,
        keys: KeyStore,
        staff_named: bool,
        staff_name: Callable[[str], str | None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.records = records
        self.keys = keys
        self.staff_named = staff_named
        self._staff_name = staff_name
        self.clock = clock

    # ================================================================== ingest

    def ingest(self, resources: Sequence[Any], *, sender: str) -> IngestResult:
        if len(resources) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} events, not {len(resources)}")
        result = IngestResult()
        parsed: list[tuple[int, AccessFacts, str, str]] = []
        for index, resource in enumerate(resources):
            try:
                facts = parse_audit_event(resource)
            except BalpError as exc:
                result.lines.append(LineResult(index, "rejected", str(exc)))
                continue
            patient_id = self.records.find_by_identifier(*facts.patient_identifier) or (
                self.records.find_by_mrn(facts.patient_identifier[1])
            )
            if patient_id is None:
                result.lines.append(LineResult(index, "rejected", "no patient here has that identifier"))
                continue
            parsed.append((index, facts, patient_id, self._source_key(sender, facts.event_id)))
        self._store(parsed, sender, result)
        result.lines.sort(key=lambda line: line.index)
        return result

    def _store(self, parsed: list[tuple[int, AccessFacts, str, str]], sender: str, result: IngestResult) -> None:
        if not parsed:
            return
        with self.db.write() as session:
            known = set(
                session.scalars(
                    select(AccessEvent.source_key).where(AccessEvent.source_key.in_([key for *_rest, key in parsed]))
                )
            )
            events: list[AuditEvent] = []
            seen: set[str] = set()
            for index, facts, patient_id, key in parsed:
                if key in known or key in seen:
                    result.lines.append(LineResult(index, "duplicate", "already recorded"))
                    continue
                seen.add(key)
                row_id = self._add(session, patient_id, key, facts, origin="api")
                result.lines.append(LineResult(index, "accepted", id=row_id))
                events.append(
                    AuditEvent(
                        action="access.recorded",
                        actor=sender,
                        role="integration",
                        subject=patient_id,
                        object=f"access-event:{row_id}",
                        purpose=facts.purpose,
                        details={"action": facts.action, "emergency": facts.emergency},
                        payload=asdict(facts),
                    )
                )
            self.ledger.append_many(session, events)

    def _add(self, session: Session, patient_id: str, source_key: str, facts: AccessFacts, *, origin: str) -> str:
        row_id = new_id()
        key = self.keys.data_key(patient_id, CATEGORY, create=True)
        details = {k: v for k, v in asdict(facts).items() if k not in {"patient_identifier", "occurred_at"}}
        body = encrypt_field(key.dek, json.dumps(details).encode(), _context(patient_id, row_id, key.version))
        session.add(
            AccessEvent(
                id=row_id,
                patient_id=patient_id,
                source_key=source_key,
                occurred_at=facts.occurred_at,
                action=facts.action,
                purpose=facts.purpose,
                emergency=facts.emergency,
                agent_kind=facts.agent_kind,
                origin=origin,
                org_index=self._org_index(facts.organisation),
                role_index=self._role_index(facts.role),
                key_version=key.version,
                body=body,
            )
        )
        return row_id

    def _source_key(self, sender: str, event_id: str) -> str:
        return self.records.blind("access-source", f"{sender}|{event_id}")

    def _org_index(self, organisation: str) -> str:
        return self.records.blind("access-org", organisation)

    def _role_index(self, role: str | None) -> str:
        return self.records.blind("access-role", role or "unknown")

    # ================================================================== the portal's own reads

    def record_portal_read(
        self,
        session: Session,
        *,
        patient_id: str,
        actor: str,
        role: str | None,
        purpose: str,
        categories: Iterable[str] | None,
    ) -> None:
        """Called by the record store inside the transaction that logs a read: staff reads show up here."""
        if not actor.startswith(("staff:", "patient:")):
            return  # the portal's own machinery (notifications, enrolment checks) is in the ledger only
        kind, _, account_id = actor.partition(":")
        wanted = sorted(categories) if categories else []
        facts = AccessFacts(
            event_id=new_id(),
            occurred_at=self.clock(),
            action="read",
            purpose=purpose,
            emergency=False,
            break_glass_reason=None,
            agent_kind="person",
            person=None,
            person_id=account_id,
            role={"staff": role or "privacy office", "patient": "you"}[kind],
            organisation="Privacy portal",
            department="Privacy office" if kind == "staff" else None,
            data_category=wanted[0] if len(wanted) == 1 else None,
            what=None,
            recipient=None,
            patient_identifier=("", ""),
        )
        self._add(session, patient_id, self._source_key("portal", facts.event_id), facts, origin="portal")

    # ================================================================== the patient's timeline

    def timeline(
        self, patient_id: str, flt: TimelineFilter, *, page: int = 1, page_size: int = PAGE_SIZE
    ) -> tuple[list[TimelineEntry], int]:
        """One page of accesses, newest first, and the total that match."""
        query = self._filtered(select(AccessEvent).where(AccessEvent.patient_id == patient_id), flt)
        with self.db.read() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(AccessEvent.occurred_at.desc(), AccessEvent.id)
                .limit(page_size)
                .offset((max(page, 1) - 1) * page_size)
            ).all()
        return [self._entry(row) for row in rows], int(total)

    def all_entries(self, patient_id: str, flt: TimelineFilter) -> list[TimelineEntry]:
        query = self._filtered(select(AccessEvent).where(AccessEvent.patient_id == patient_id), flt)
        with self.db.read() as session:
            rows = session.scalars(query.order_by(AccessEvent.occurred_at.desc(), AccessEvent.id)).all()
        return [self._entry(row) for row in rows]

    def _filtered(self, query: Any, flt: TimelineFilter) -> Any:
        if flt.start is not None:
            query = query.where(AccessEvent.occurred_at >= flt.start)
        if flt.end is not None:
            query = query.where(AccessEvent.occurred_at < flt.end)
        if flt.organisation:
            query = query.where(AccessEvent.org_index == self._org_index(flt.organisation))
        if flt.role:
            query = query.where(AccessEvent.role_index == self._role_index(flt.role))
        if flt.action:
            query = query.where(AccessEvent.action == flt.action)
        if flt.purpose:
            query = query.where(AccessEvent.purpose == flt.purpose)
        if flt.emergency_only:
            query = query.where(AccessEvent.emergency.is_(True))
        if flt.agent_kind:
            query = query.where(AccessEvent.agent_kind == flt.agent_kind)
        return query

    def _entry(self, row: AccessEvent) -> TimelineEntry:
        try:
            dek = self.keys.key_version(row.patient_id, CATEGORY, row.key_version)
            details: dict[str, Any] | None = json.loads(
                decrypt_field(dek, row.body, _context(row.patient_id, row.id, row.key_version))
            )
        except KeyDestroyedError:
            details = None
        entry = TimelineEntry(
            row.id, row.occurred_at, row.action, row.purpose, row.emergency, row.agent_kind, row.origin, details, ""
        )
        return TimelineEntry(**{**asdict(entry), "details": details, "sentence": self.describe(entry)})

    def describe(self, entry: TimelineEntry) -> str:
        """A plain-language sentence, e.g. "Dr A. Jones, cardiologist at Ward 4, viewed your lab results for your
        treatment"."""
        details = entry.details
        if details is None:
            return "An access whose details were erased at your request"
        who = self._who(entry, details)
        where = ", ".join(part for part in (details.get("department"), details.get("organisation")) if part)
        what = details.get("what") or CATEGORY_WORDS.get(details.get("data_category") or "", "your record")
        verb = ACTION_WORDS.get(entry.action, entry.action)
        why = PURPOSE_WORDS.get(entry.purpose, f"(purpose {entry.purpose})")
        sentence = f"{who}{f' at {where}' if where else ''} {verb} {what} {why}"
        if entry.action == "disclose" and details.get("recipient"):
            sentence += f", to {details['recipient']}"
        if entry.emergency:
            sentence += " — emergency access" + (
                f" ({details['break_glass_reason']})" if details.get("break_glass_reason") else ""
            )
        return sentence

    def _who(self, entry: TimelineEntry, details: dict[str, Any]) -> str:
        role = details.get("role")
        if entry.origin == "portal":
            if role == "you":
                return "You"
            name = self._staff_name(details.get("person_id") or "") if self.staff_named else None
            return f"{name}, {role}" if name else f"A member of the privacy office ({role})"
        if entry.agent_kind == "system":
            return f"An automated system{f' ({role})' if role else ''}"
        person = details.get("person") if self.staff_named else None
        if person and role:
            return f"{person}, {role.lower()}"
        return person or (f"A {role.lower()}" if role else "A member of staff")

    # ================================================================== summaries

    def weekly_by_organisation(self, patient_id: str, flt: TimelineFilter) -> tuple[list[str], dict[str, list[int]]]:
        """Accesses per ISO week (oldest first) for each organisation, for the chart and its table."""
        entries = self.all_entries(patient_id, flt)
        if not entries:
            return [], {}
        last = max(e.occurred_at for e in entries)
        first = min(e.occurred_at for e in entries)
        weeks: list[str] = []
        cursor = first - timedelta(days=first.weekday())
        while cursor <= last:
            weeks.append(cursor.strftime("%G-W%V"))
            cursor += timedelta(days=7)
        counts: dict[str, list[int]] = {}
        for entry in entries:
            org = (entry.details or {}).get("organisation") or "Erased"
            series = counts.setdefault(org, [0] * len(weeks))
            series[weeks.index(entry.occurred_at.strftime("%G-W%V"))] += 1
        return weeks, counts

    def organisations(self, patient_id: str) -> list[str]:
        entries = self.all_entries(patient_id, TimelineFilter())
        return sorted({(e.details or {}).get("organisation") or "" for e in entries} - {""})


def _context(patient_id: str, row_id: str, version: int) -> FieldContext:
    return FieldContext(patient_id=patient_id, table="access_events", column="body", row_id=row_id, key_version=version)
