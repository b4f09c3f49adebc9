"""The access log: ingest AuditEvents from other systems, record the portal's own reads, and
answer a patient's "who looked at my record, and why?".

Ingest is all or nothing per batch for what is accepted: good lines are stored in one
transaction with their ledger entries; bad lines are reported with the reason and never make a
good one fail. A line already stored (same sender and event id) is a harmless duplicate.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, Protocol, cast

import anyio.to_thread
import msgspec
from cachetools import TTLCache
from sqlalchemy import Connection, String, Table, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from portal.access.balp import AccessFacts
from portal.access.models import (
    AccessCase,
    AccessEvent,
    AccessLogVersion,
    AlertPreference,
    CaseMessage,
    DisclosureAccounting,
    week_of,
)
from portal.access.reading import LineReader, Read, read_resource
from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, insert_rows, new_id, retried_on_collision, unique_key, utcnow
from portal.hot_reads import HotRead, HotReads
from portal.records.models import PatientIdentifier
from portal.records.service import RecordStore
from portal.security.crypto import FieldContext, decrypt_field, encrypt_field
from portal.security.keystore import ActiveKey, KeyDestroyedError, KeyStore

MAX_BATCH = 10_000
ACCOUNTING_YEARS = 6
TPO_PURPOSES = {"TREAT", "ETREAT", "HPAYMT", "HOPERAT"}  # excluded from an accounting (164.528(a)(1))


class AlertSender(Protocol):
    def __call__(self, session: Session, patient_id: str, template: str, key: str) -> None: ...


CATEGORY = "access_log"
ACCESS_EVENTS = cast(Table, AccessEvent.__table__)  # inserts through Core skip the ORM's bulk-insert step
SOURCE_KEY_UNIQUE = unique_key(ACCESS_EVENTS, "source_key")
PAGE_SIZE = 25
# Summaries of (patient, filter) kept per process. The version the database keeps makes them exact;
# the time limit only bounds what a change it cannot see (a key destroyed by hand) leaves on show.
SUMMARY_CACHE_ENTRIES = 1024
SUMMARY_CACHE_SECONDS = 60.0
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


class _NewRows:
    """The access_events rows of one ingest batch, made one at a time, with what each row implies: its
    line's result, its ledger event, and whether it may alert the patient (sent once the rows are stored)."""

    def __init__(
        self,
        sender: str,
        *,
        keys: Mapping[str, ActiveKey],
        org_index: Callable[[str], str],
        role_index: Callable[[str | None], str],
        known: set[str],
        orgs_seen: set[tuple[str, str]],
    ) -> None:
        self.sender = sender
        self.keys = keys
        self.org_index = org_index
        self.role_index = role_index
        self.known = known
        self.orgs_seen = orgs_seen
        self.created_at = utcnow()  # one transaction: one time for its rows
        self.events: list[AuditEvent] = []
        self.alerts: list[tuple[str, AccessFacts, str, bool]] = []  # (patient id, facts, row id, new organisation)

    def rows(
        self, parsed: Sequence[tuple[int, AccessFacts, str, str]], result: IngestResult
    ) -> Iterator[dict[str, Any]]:
        """The rows to store, in order; each line's outcome (accepted, or a duplicate) goes to ``result``."""
        for index, facts, patient_id, key in parsed:
            if key in self.known:
                result.lines.append(LineResult(index, "duplicate", "already recorded"))
                continue
            self.known.add(key)
            as_dict = facts._asdict()
            row = _access_row(
                patient_id,
                key,
                facts,
                origin="api",
                as_dict=as_dict,
                key=self.keys[patient_id],
                org_index=self.org_index(facts.organisation),
                role_index=self.role_index(facts.role),
                created_at=self.created_at,
            )
            org = (patient_id, row["org_index"])
            self.alerts.append((patient_id, facts, row["id"], org not in self.orgs_seen))
            self.orgs_seen.add(org)
            result.lines.append(LineResult(index, "accepted", id=row["id"]))
            self.events.append(
                AuditEvent(
                    action="access.recorded",
                    actor=self.sender,
                    role="integration",
                    subject=patient_id,
                    object=f"access-event:{row['id']}",
                    purpose=facts.purpose,
                    details={"action": facts.action, "emergency": facts.emergency},
                    payload=as_dict,
                )
            )
            yield row


class AccessLog:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        records: RecordStore,
        keys: KeyStore,
        hot: HotReads,
        staff_named: bool,
        staff_name: Callable[[str], str | None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._alert: AlertSender | None = None
        self.db = db
        self.hot = hot
        self.ledger = ledger
        self.records = records
        self.keys = keys
        self.staff_named = staff_named
        self._staff_name = staff_name
        self.clock = clock
        self._summaries: TTLCache[tuple[str, TimelineFilter, int], AccessSummary] = TTLCache(
            SUMMARY_CACHE_ENTRIES, SUMMARY_CACHE_SECONDS
        )
        self._summaries_lock = threading.Lock()
        self.reader = LineReader()

    # ================================================================== ingest

    def ingest(self, resources: Sequence[Any], *, sender: str) -> IngestResult:
        """Record decoded AuditEvents; each line's outcome is in the result, by its index."""
        _check_batch_size(len(resources))
        return self._ingest_read([read_resource(resource) for resource in resources], sender)

    def ingest_lines(self, lines: Sequence[bytes], *, sender: str) -> IngestResult:
        """Record AuditEvents given as lines of JSON (NDJSON), read in two processes when there are many."""
        _check_batch_size(len(lines))
        return self._ingest_read(self.reader.read(lines), sender)

    def _ingest_read(self, read: Sequence[Read], sender: str) -> IngestResult:
        result = IngestResult()
        readable: list[tuple[int, AccessFacts]] = []
        for index, facts in enumerate(read):
            if isinstance(facts, str):
                result.lines.append(LineResult(index, "rejected", facts))
            else:
                readable.append((index, facts))
        patients = self._patients_of([facts.patient_identifier for _index, facts in readable])
        parsed: list[tuple[int, AccessFacts, str, str]] = []
        for index, facts in readable:
            patient_id = patients.get(facts.patient_identifier)
            if patient_id is None:
                result.lines.append(LineResult(index, "rejected", "no patient here has that identifier"))
                continue
            parsed.append((index, facts, patient_id, self._source_key(sender, facts.event_id)))
        self._store(parsed, sender, result)
        result.lines.sort(key=lambda line: line.index)
        return result

    def _patients_of(self, identifiers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Patient ids for (system, value) identifiers, by the identifier or else as an MRN: one query."""
        wanted: dict[tuple[str, str], tuple[str, str]] = {
            (system, value): (self.records.identifier_index(system, value), self.records.mrn_index(value))
            for system, value in set(identifiers)
        }
        indexes = [index for pair in wanted.values() for index in pair]
        with self.db.read() as session:
            found = (
                dict(
                    session.execute(
                        select(PatientIdentifier.index, PatientIdentifier.patient_id).where(
                            self.db.among(PatientIdentifier.index, indexes)
                        )
                    ).all()
                )
                if indexes
                else {}
            )
        resolved: dict[tuple[str, str], str] = {}
        for identifier, (by_identifier, by_mrn) in wanted.items():
            patient_id = found.get(by_identifier) or found.get(by_mrn)
            if patient_id is not None:
                resolved[identifier] = patient_id
        return resolved

    def _store(self, parsed: list[tuple[int, AccessFacts, str, str]], sender: str, result: IngestResult) -> None:
        decided = len(result.lines)  # the lines refused before storing

        def attempt() -> None:
            del result.lines[decided:]  # what an attempt that collided said of the others
            self._store_once(parsed, sender, result)

        # A sender that gave up waiting and sent its batch again gets "duplicate" for what the first stored.
        retried_on_collision(attempt, SOURCE_KEY_UNIQUE)

    def _store_once(self, parsed: list[tuple[int, AccessFacts, str, str]], sender: str, result: IngestResult) -> None:
        """One transaction: the events not stored yet, their ledger entries and alerts."""
        if not parsed:
            return
        batch_patients = {patient_id for _i, _f, patient_id, _k in parsed}
        # Per batch, not per event: each patient's key, and each organisation's and role's blind index.
        keys = {patient_id: self.keys.data_key(patient_id, CATEGORY, create=True) for patient_id in batch_patients}
        org_index, role_index = functools.cache(self._org_index), functools.cache(self._role_index)
        with self.db.write() as session:
            known = set(
                session.scalars(
                    select(AccessEvent.source_key).where(
                        self.db.among(AccessEvent.source_key, [key for *_rest, key in parsed])
                    )
                )
            )
            preferences = {
                p.patient_id: p
                for p in session.scalars(
                    select(AlertPreference).where(self.db.among(AlertPreference.patient_id, batch_patients))
                )
            }
            orgs_seen = self._known_organisations(
                session,
                {p.patient_id for p in preferences.values() if p.new_organisation},
                {org_index(facts.organisation) for _i, facts, _p, _k in parsed},
            )
            batch = _NewRows(
                sender, keys=keys, org_index=org_index, role_index=role_index, known=known, orgs_seen=orgs_seen
            )
            # The rows are built while COPY sends them: the database stores each while the next is encrypted.
            insert_rows(session.connection(), ACCESS_EVENTS, batch.rows(parsed, result))
            for patient_id, facts, row_id, new_org in batch.alerts:
                self._alerts_for(session, preferences.get(patient_id), facts, row_id, new_org=new_org)
            self.ledger.append_many(session, batch.events)

    def _known_organisations(self, session: Session, patients: set[str], orgs: set[str]) -> set[tuple[str, str]]:
        """Which of these organisations already accessed each of these patients' records (for alerts)."""
        if not patients:
            return set()
        rows = session.execute(
            select(AccessEvent.patient_id, AccessEvent.org_index)
            .distinct()
            .where(self.db.among(AccessEvent.patient_id, patients), self.db.among(AccessEvent.org_index, orgs))
        ).all()
        return {(patient_id, org) for patient_id, org in rows}

    def _source_key(self, sender: str, event_id: str) -> str:
        return self.records.blind("access-source", f"{sender}|{event_id}")

    def _org_index(self, organisation: str) -> str:
        return self.records.blind("access-org", organisation)

    def _role_index(self, role: str | None) -> str:
        return self.records.blind("access-role", role or "unknown")

    def use_alerts(self, sender: AlertSender) -> None:
        """Who tells patients about emergency accesses and new organisations (the notifier)."""
        self._alert = sender

    def _alerts_for(
        self, session: Session, preference: AlertPreference | None, facts: AccessFacts, row_id: str, new_org: bool
    ) -> None:
        if self._alert is None or preference is None:
            return
        if preference.emergency and facts.emergency:
            self._alert(session, preference.patient_id, "access_emergency", row_id)
        if preference.new_organisation and new_org:
            self._alert(session, preference.patient_id, "access_new_organisation", row_id)

    def set_alerts(self, patient_id: str, *, emergency: bool, new_organisation: bool) -> None:
        with self.db.write() as session:
            preference = session.get(AlertPreference, patient_id) or AlertPreference(patient_id=patient_id)
            preference.emergency, preference.new_organisation = emergency, new_organisation
            session.add(preference)
            self.ledger.append(
                session,
                AuditEvent(
                    action="access.alerts_changed",
                    actor=f"patient:{patient_id}",
                    subject=patient_id,
                    details={"emergency": emergency, "new_organisation": new_organisation},
                ),
            )

    # ================================================================== accounting of disclosures

    def accounting(self, patient_id: str, *, actor: str) -> tuple[DisclosureAccounting, list[TimelineEntry]]:
        """Disclosures of the last six years other than for treatment, payment and operations (164.528);
        the first accounting in any 12 months is free."""
        now = self.clock()
        since = now - timedelta(days=ACCOUNTING_YEARS * 365 + 2)
        entries = [
            e
            for e in self.all_entries(patient_id, TimelineFilter(start=since, action="disclose"))
            if e.purpose not in TPO_PURPOSES
        ]
        with self.db.write() as session:
            recent = session.scalar(
                select(func.count())
                .select_from(DisclosureAccounting)
                .where(
                    DisclosureAccounting.patient_id == patient_id,
                    DisclosureAccounting.requested_at > now - timedelta(days=365),
                )
            )
            record = DisclosureAccounting(
                patient_id=patient_id, requested_at=now, period_start=since, disclosures=len(entries), free=not recent
            )
            session.add(record)
            self.ledger.append(
                session,
                AuditEvent(
                    action="access.accounting",
                    actor=actor,
                    subject=patient_id,
                    details={"disclosures": len(entries), "free": not recent},
                ),
            )
        return record, entries

    # ================================================================== retention

    def sweep(self, retention_years: int) -> int:
        """Delete accesses older than the retention period (cases still open keep theirs); the sweep is logged."""
        cutoff = self.clock() - timedelta(days=retention_years * 365)
        with self.db.write() as session:
            kept = select(AccessCase.access_event_id).where(AccessCase.status != "closed")
            old = select(AccessEvent.id).where(AccessEvent.occurred_at < cutoff, AccessEvent.id.not_in(kept))
            ids = list(session.scalars(old))
            if ids:
                closed = select(AccessCase.id).where(AccessCase.access_event_id.in_(ids))
                session.execute(delete(CaseMessage).where(CaseMessage.case_id.in_(closed)))
                session.execute(delete(AccessCase).where(AccessCase.access_event_id.in_(ids)))
                session.execute(delete(AccessEvent).where(AccessEvent.id.in_(ids)))
            self.ledger.append(
                session,
                AuditEvent(
                    action="access.retention_sweep",
                    actor="system:retention",
                    details={"deleted": len(ids), "retention_years": retention_years, "cutoff": cutoff.isoformat()},
                ),
            )
        return len(ids)

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
        row = _access_row(
            patient_id,
            self._source_key("portal", facts.event_id),
            facts,
            origin="portal",
            as_dict=facts._asdict(),
            key=self.keys.data_key(patient_id, CATEGORY, create=True),
            org_index=self._org_index(facts.organisation),
            role_index=self._role_index(facts.role),
            created_at=utcnow(),
        )
        session.execute(insert(ACCESS_EVENTS), [row])

    # ================================================================== the patient's timeline

    async def timeline(
        self, patient_id: str, flt: TimelineFilter, *, page: int = 1, page_size: int = PAGE_SIZE
    ) -> tuple[list[TimelineEntry], int]:
        """One page of accesses, newest first, and the total that match (the "older accesses" partial)."""
        facts, rows = await self._facts_and_page(patient_id, flt, page, page_size)
        summary = await self._summary(patient_id, flt, facts.version)
        return await self._entries(patient_id, rows), summary.total

    async def overview(
        self, patient_id: str, flt: TimelineFilter, *, page: int = 1, page_size: int = PAGE_SIZE
    ) -> Overview:
        """Everything the access page shows: a page of accesses, the summary (chart, total, organisations)
        and the alert choices.

        The reads run on the event loop where the database allows it (``HotReads``), each seeing what
        was committed when it started, as in a read-committed transaction.
        """
        facts, rows = await self._facts_and_page(patient_id, flt, page, page_size)
        summary = await self._summary(patient_id, flt, facts.version)
        alerts = AlertPreference(
            patient_id=patient_id, emergency=bool(facts.emergency), new_organisation=bool(facts.new_organisation)
        )
        return Overview(entries=await self._entries(patient_id, rows), summary=summary, alerts=alerts)

    async def _facts_and_page(
        self, patient_id: str, flt: TimelineFilter, page: int, page_size: int
    ) -> tuple[PageFacts, list[PageRow]]:
        """The patient's page facts and a page of their accesses, newest first, in one round trip."""
        shape, params = self._filter_terms(flt)
        params.update(patient_id=patient_id, limit=page_size, offset=(max(page, 1) - 1) * page_size)
        facts, found = await self.hot.together(
            HotRead(PAGE_FACTS, {"patient_id": patient_id}),
            HotRead(_page_statement(shape), params, prepare=False),  # filters differ in selectivity
        )
        return (PageFacts(*facts[0]) if facts else PageFacts(None, None, None)), [PageRow.of(row) for row in found]

    async def _summary(self, patient_id: str, flt: TimelineFilter, version: int | None) -> AccessSummary:
        """The weekly chart (whose counts add up to the total, so nothing is counted twice) and the
        organisations, from the cache while the patient's access-log ``version`` is unchanged.

        The version must be read before this: what is counted after it is at least as new, so a
        summary is never older than the version it is cached under.
        """
        key = (patient_id, flt, version or 0)
        with self._summaries_lock:
            cached = self._summaries.get(key)
        if cached is not None:
            return cached
        summary = await anyio.to_thread.run_sync(self._summarise, patient_id, flt)
        with self._summaries_lock:
            self._summaries[key] = summary
        return summary

    def _summarise(self, patient_id: str, flt: TimelineFilter) -> AccessSummary:
        with self.db.lone_read() as conn:
            counts = self._weekly_counts(conn, patient_id, flt)
            names = self._names(conn, patient_id)
        weeks, series = _weekly_series(counts, names)
        return AccessSummary(
            total=sum(count for _org, _week, count in counts),
            weeks=weeks,
            series=series,
            organisations=_known_names(names),
        )

    async def _entries(self, patient_id: str, rows: list[PageRow]) -> list[TimelineEntry]:
        if self._described_without_reads(patient_id, rows):
            return [self.entry(row) for row in rows]
        # A key to fetch from the key store, or a staff member's name: blocking reads, so in a worker thread.
        return await anyio.to_thread.run_sync(lambda: [self.entry(row) for row in rows])

    def _described_without_reads(self, patient_id: str, rows: Sequence[PageRow]) -> bool:
        return all(self.keys.holds(patient_id, CATEGORY, row.key_version) for row in rows) and not (
            self.staff_named and any(row.origin == "portal" for row in rows)
        )

    def own_entry(self, patient_id: str, event_id: str) -> TimelineEntry | None:
        """One access of this patient's; another patient's is indistinguishable from a missing one."""
        with self.db.read() as session:
            row = session.get(AccessEvent, event_id)
        return self.entry(row) if row is not None and row.patient_id == patient_id else None

    def all_entries(self, patient_id: str, flt: TimelineFilter) -> list[TimelineEntry]:
        query = self._mine(patient_id, flt).order_by(AccessEvent.occurred_at.desc(), AccessEvent.id)
        with self.db.read() as session:
            rows = session.scalars(query).all()
        return [self.entry(row) for row in rows]

    def _mine(self, patient_id: str, flt: TimelineFilter) -> Any:
        return self._filtered(select(AccessEvent).where(AccessEvent.patient_id == patient_id), flt)

    def _filtered(self, query: Any, flt: TimelineFilter) -> Any:
        shape, params = self._filter_terms(flt)
        return query.where(*(FILTER_CONDITIONS[name] for name in shape)).params(params)

    def _filter_terms(self, flt: TimelineFilter) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The names of the conditions (``FILTER_CONDITIONS``) this filter sets, and their parameters."""
        values: dict[str, Any] = {
            "start": flt.start,
            "end": flt.end,
            "organisation": self._org_index(flt.organisation) if flt.organisation else None,
            "role": self._role_index(flt.role) if flt.role else None,
            "action": flt.action or None,
            "purpose": flt.purpose or None,
            "emergency_only": True if flt.emergency_only else None,
            "agent_kind": flt.agent_kind or None,
        }
        shape = tuple(name for name, value in values.items() if value is not None)
        return shape, {f"filter_{name}": values[name] for name in shape if name != "emergency_only"}

    def seal(self, patient_id: str, table: str, row_id: str, plaintext: bytes) -> tuple[int, bytes]:
        """Encrypt under the patient's access-log key (bound to table and row); returns (key version, blob)."""
        key = self.keys.data_key(patient_id, CATEGORY, create=True)
        return key.version, _encrypt(key, patient_id, table, row_id, plaintext)

    def open(self, patient_id: str, table: str, row_id: str, version: int, blob: bytes) -> bytes | None:
        """The plaintext, or None once the patient's access log was erased (its key destroyed)."""
        try:
            dek = self.keys.key_version(patient_id, CATEGORY, version)
        except KeyDestroyedError:
            return None
        return decrypt_field(dek, blob, _context(patient_id, table, row_id, version))

    def entry(self, row: AccessEvent | PageRow) -> TimelineEntry:
        details = self._details(row.patient_id, row.id, row.key_version, row.body)
        return TimelineEntry(
            row.id,
            row.occurred_at,
            row.action,
            row.purpose,
            row.emergency,
            row.agent_kind,
            row.origin,
            details,
            self.describe(row, details),
        )

    def _details(self, patient_id: str, row_id: str, version: int, body: bytes) -> dict[str, Any] | None:
        plaintext = self.open(patient_id, "access_events", row_id, version, body)
        return msgspec.json.decode(plaintext) if plaintext is not None else None

    def describe(self, entry: AccessEvent | PageRow, details: dict[str, Any] | None) -> str:
        """A plain-language sentence for an access with these (decrypted) details, e.g. "Dr A. Jones, cardiologist
        at Ward 4, viewed your lab results for your treatment"."""
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

    def _who(self, entry: AccessEvent | PageRow, details: dict[str, Any]) -> str:
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

    def _weekly_counts(self, conn: Connection, patient_id: str, flt: TimelineFilter) -> list[tuple[str, date, int]]:
        """(organisation index, week, accesses) for each pair with any access that matches."""
        counted = select(AccessEvent.org_index, AccessEvent.week, func.count()).where(
            AccessEvent.patient_id == patient_id
        )
        rows = conn.execute(self._filtered(counted, flt).group_by(AccessEvent.org_index, AccessEvent.week)).all()
        return [(org, week, int(count)) for org, week, count in rows]

    def _names(self, conn: Connection, patient_id: str) -> dict[str, str]:
        """Organisation blind index -> name, decrypting a single access per organisation."""
        names = {}
        for org, row_id, version, body in conn.execute(ONE_PER_ORGANISATION, {"patient_id": patient_id}):
            details = self._details(patient_id, row_id, version, body)
            names[org] = (details or {}).get("organisation") or ERASED
        return names


@dataclass(frozen=True)
class AccessSummary:
    """What the access page shows above the timeline, for one patient and filter."""

    total: int
    weeks: list[str]  # ISO weeks, oldest first, none missing in between
    series: dict[str, list[int]]  # organisation name -> accesses in each week
    organisations: list[str]  # every organisation that accessed the record (unfiltered)
    _rendered: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def table(self) -> list[tuple[str, tuple[int, ...]]]:
        """Each week with every organisation's count in it: the chart's text equivalent, row by row."""
        return list(zip(self.weeks, zip(*self.series.values(), strict=True), strict=True))

    def rendered(self, name: str, render: Callable[[AccessSummary], str]) -> str:
        """``render(self)``, done once per summary: the markup is cached along with it."""
        if name not in self._rendered:
            self._rendered[name] = render(self)
        return self._rendered[name]


@dataclass(frozen=True)
class Overview:
    entries: list[TimelineEntry]
    summary: AccessSummary
    alerts: AlertPreference


ERASED = "Erased"


FILTER_CONDITIONS: dict[str, Any] = {
    "start": AccessEvent.occurred_at >= bindparam("filter_start"),
    "end": AccessEvent.occurred_at < bindparam("filter_end"),
    "organisation": AccessEvent.org_index == bindparam("filter_organisation"),
    "role": AccessEvent.role_index == bindparam("filter_role"),
    "action": AccessEvent.action == bindparam("filter_action"),
    "purpose": AccessEvent.purpose == bindparam("filter_purpose"),
    "emergency_only": AccessEvent.emergency.is_(True),
    "agent_kind": AccessEvent.agent_kind == bindparam("filter_agent_kind"),
}


class PageRow(NamedTuple):
    """What the timeline shows of a stored access (the columns of ``_page_statement``)."""

    id: str
    patient_id: str
    occurred_at: datetime
    action: str
    purpose: str
    emergency: bool
    agent_kind: str
    origin: str
    key_version: int
    body: bytes

    @classmethod
    def of(cls, row: Sequence[Any]) -> PageRow:
        # A bare driver gives times in the connection's time zone; the portal shows UTC everywhere.
        return cls(*row)._replace(occurred_at=row[2].astimezone(UTC))


class PageFacts(NamedTuple):
    version: int | None
    emergency: bool | None
    new_organisation: bool | None


@functools.cache  # one statement per combination of filters: hot reads compile each once
def _page_statement(shape: tuple[str, ...]) -> Any:
    """A page of the accesses of ``:patient_id`` that meet the conditions named in ``shape``, newest first."""
    return (
        select(*(getattr(AccessEvent, name) for name in PageRow._fields))
        .where(AccessEvent.patient_id == bindparam("patient_id"), *(FILTER_CONDITIONS[name] for name in shape))
        .order_by(AccessEvent.occurred_at.desc(), AccessEvent.id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


def _one_per_organisation() -> Any:
    """One access (organisation index, id, key version, body) of each organisation that accessed the
    record of the patient ``:patient_id``.

    The organisations are found by stepping through the (patient, organisation) index from one to the
    next (a loose index scan in a recursive query), so the cost grows with the number of organisations
    rather than with the number of accesses. Built once: building it takes longer than running it.
    """
    patient = bindparam("patient_id", type_=String())
    step = AccessEvent.__table__.alias("step")
    walk = (
        select(func.min(AccessEvent.org_index).label("org_index"))
        .where(AccessEvent.patient_id == patient)
        .cte("orgs", recursive=True)
    )
    walk = walk.union_all(
        select(
            select(func.min(step.c.org_index))
            .where(step.c.patient_id == patient, step.c.org_index > walk.c.org_index)
            .scalar_subquery()
        ).where(walk.c.org_index.is_not(None))
    )
    first = (
        select(step.c.id).where(step.c.patient_id == patient, step.c.org_index == walk.c.org_index).limit(1)
    ).scalar_subquery()
    return select(AccessEvent.org_index, AccessEvent.id, AccessEvent.key_version, AccessEvent.body).where(
        AccessEvent.id.in_(select(first).select_from(walk))
    )


ONE_PER_ORGANISATION = _one_per_organisation()


def _page_facts() -> Any:
    """The access-log version and the alert choices of the patient ``:patient_id`` (None where there are
    none yet), in one statement."""
    patient = bindparam("patient_id", type_=String())
    facts: list[tuple[Any, Any]] = [
        (AccessLogVersion, AccessLogVersion.version),
        (AlertPreference, AlertPreference.emergency),
        (AlertPreference, AlertPreference.new_organisation),
    ]
    return select(*(select(c).where(model.patient_id == patient).scalar_subquery().label(c.key) for model, c in facts))


PAGE_FACTS = _page_facts()


def _weekly_series(
    counts: Sequence[tuple[str, date, int]], names: dict[str, str]
) -> tuple[list[str], dict[str, list[int]]]:
    """The weeks from the first to the last with any access, and each organisation's count per week (by name,
    so the accesses of organisations whose names were erased add up under one)."""
    if not counts:
        return [], {}
    first = min(week for _org, week, _count in counts)
    last = max(week for _org, week, _count in counts)
    mondays = [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]
    position = {monday: i for i, monday in enumerate(mondays)}
    series: dict[str, list[int]] = {}
    for org, week, count in counts:
        series.setdefault(names.get(org, ERASED), [0] * len(mondays))[position[week]] += count
    return [_iso_week(monday) for monday in mondays], dict(sorted(series.items()))


def _known_names(names: dict[str, str]) -> list[str]:
    return sorted(set(names.values()) - {ERASED})


@functools.lru_cache(maxsize=4096)
def _iso_week(day: date) -> str:
    year, week, _weekday = day.isocalendar()
    return f"{year}-W{week:02d}"


def _check_batch_size(events: int) -> None:
    if events > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} events, not {events}")


def _access_row(
    patient_id: str,
    source_key: str,
    facts: AccessFacts,
    *,
    origin: str,
    as_dict: dict[str, Any],
    key: ActiveKey,
    org_index: str,
    role_index: str,
    created_at: datetime,
) -> dict[str, Any]:
    """An access_events row, its details encrypted under ``key`` (the patient's current access-log key)."""
    row_id = new_id()
    details = {k: v for k, v in as_dict.items() if k not in {"patient_identifier", "occurred_at"}}
    return {
        "id": row_id,
        "patient_id": patient_id,
        "source_key": source_key,
        "occurred_at": facts.occurred_at,
        "week": week_of(facts.occurred_at),
        "action": facts.action,
        "purpose": facts.purpose,
        "emergency": facts.emergency,
        "agent_kind": facts.agent_kind,
        "origin": origin,
        "org_index": org_index,
        "role_index": role_index,
        "key_version": key.version,
        "body": _encrypt(key, patient_id, "access_events", row_id, msgspec.json.encode(details)),
        "created_at": created_at,
    }


def _encrypt(key: ActiveKey, patient_id: str, table: str, row_id: str, plaintext: bytes) -> bytes:
    return encrypt_field(key.dek, plaintext, _context(patient_id, table, row_id, key.version))


def _context(patient_id: str, table: str, row_id: str, version: int) -> FieldContext:
    return FieldContext(patient_id=patient_id, table=table, column="body", row_id=row_id, key_version=version)
