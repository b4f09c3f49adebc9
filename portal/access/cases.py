"""Questioning an access: a case between the patient and the privacy office, due within 30 days.

Every step (opened, asked, replied, closed with a finding) is a ledger entry; the messages are
encrypted under the patient's access-log key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.access.models import AccessCase, AccessEvent, CaseMessage
from portal.access.service import AccessLog, TimelineEntry, TimelineFilter
from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, new_id, utcnow
from portal.text import required_text

CASE_DEADLINE = timedelta(days=30)
FINDINGS = {
    "justified": "The access was justified",
    "not_justified": "The access was not justified",
    "referred": "The case was referred for further investigation",
}
NEIGHBOURHOOD = timedelta(days=2)


class CaseError(ValueError):
    """A refusal with a message that is safe to show."""


@dataclass(frozen=True)
class Message:
    author: str
    kind: str
    text: str | None
    at: datetime


@dataclass(frozen=True)
class CaseView:
    case: AccessCase
    access: TimelineEntry
    messages: list[Message]


class CaseService:
    def __init__(
        self, *, db: Database, ledger: Ledger, access: AccessLog, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.access = access
        self.clock = clock

    def open_case(self, patient_id: str, access_event_id: str, reason: str, *, actor: str) -> AccessCase:
        text = required_text(reason, "say why you question this access", CaseError)
        now = self.clock()
        with self.db.write() as session:
            event = session.get(AccessEvent, access_event_id)
            if event is None or event.patient_id != patient_id:
                raise CaseError("no such access in your history")
            case = AccessCase(
                id=new_id(),
                patient_id=patient_id,
                access_event_id=access_event_id,
                opened_at=now,
                due_at=now + CASE_DEADLINE,
            )
            session.add(case)
            session.flush()
            self._message(session, case, actor, "question", text)
            self.ledger.append(
                session,
                AuditEvent(
                    action="access.case_opened", actor=actor, subject=patient_id, object=f"case:{case.id}", payload=text
                ),
            )
        return case

    def ask_patient(self, case_id: str, question: str, *, actor: str) -> None:
        self._step(case_id, actor, "request", question, status="awaiting_patient", action="access.case_request")

    def patient_reply(self, patient_id: str, case_id: str, reply: str, *, actor: str) -> None:
        with self.db.read() as session:
            case = session.get(AccessCase, case_id)
        if case is None or case.patient_id != patient_id:
            raise CaseError("no such case")
        self._step(case_id, actor, "reply", reply, status="open", action="access.case_reply")

    def close(self, case_id: str, finding: str, explanation: str, *, actor: str) -> None:
        if finding not in FINDINGS:
            raise CaseError("choose a finding: justified, not justified or referred")
        self._step(
            case_id, actor, "finding", explanation, status="closed", action="access.case_closed", finding=finding
        )

    def _step(
        self, case_id: str, actor: str, kind: str, text: str, *, status: str, action: str, finding: str | None = None
    ) -> None:
        body = required_text(text, "write a message", CaseError)
        with self.db.write() as session:
            case = session.get(AccessCase, case_id, with_for_update=True)
            if case is None:
                raise CaseError("no such case")
            if case.status == "closed":
                raise CaseError("this case is closed")
            self._message(session, case, actor, kind, body)
            case.status = status
            if finding is not None:
                case.finding, case.closed_at = finding, self.clock()
            self.ledger.append(
                session,
                AuditEvent(
                    action=action,
                    actor=actor,
                    subject=case.patient_id,
                    object=f"case:{case.id}",
                    details={"finding": finding},
                    payload=body,
                ),
            )

    def _message(self, session: Session, case: AccessCase, author: str, kind: str, text: str) -> None:
        row_id = new_id()
        version, blob = self.access.seal(case.patient_id, "access_case_messages", row_id, text.encode())
        session.add(
            CaseMessage(
                id=row_id,
                case_id=case.id,
                author=author,
                kind=kind,
                key_version=version,
                body=blob,
                created_at=self.clock(),
            )
        )

    # ------------------------------------------------------------------ reading

    def patient_cases(self, patient_id: str) -> list[AccessCase]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(AccessCase).where(AccessCase.patient_id == patient_id).order_by(AccessCase.opened_at.desc())
                )
            )

    def queue(self, *, include_closed: bool = False) -> list[AccessCase]:
        query = select(AccessCase).order_by(AccessCase.due_at)
        if not include_closed:
            query = query.where(AccessCase.status != "closed")
        with self.db.read() as session:
            return list(session.scalars(query))

    def view(self, case_id: str, *, patient_id: str | None = None) -> CaseView:
        """A case with its access and messages; with ``patient_id``, only that patient's own case."""
        with self.db.read() as session:
            case = session.get(AccessCase, case_id)
            if case is None or (patient_id is not None and case.patient_id != patient_id):
                raise CaseError("no such case")
            event = session.get(AccessEvent, case.access_event_id)
            rows = list(
                session.scalars(
                    select(CaseMessage).where(CaseMessage.case_id == case_id).order_by(CaseMessage.created_at)
                )
            )
        assert event is not None
        messages = []
        for row in rows:
            plain = self.access.open(case.patient_id, "access_case_messages", row.id, row.key_version, row.body)
            messages.append(
                Message(row.author, row.kind, plain.decode() if plain is not None else None, row.created_at)
            )
        return CaseView(case, self.access.entry(event), messages)

    def surrounding(self, case: AccessCase, *, actor: str) -> list[TimelineEntry]:
        """The patient's accesses two days either side, for the officer; that look is itself logged."""
        with self.db.read() as session:
            event = session.get(AccessEvent, case.access_event_id)
        assert event is not None
        self.ledger.record(
            AuditEvent(
                action="access.case_context_viewed",
                actor=actor,
                role="privacy_officer",
                subject=case.patient_id,
                object=f"case:{case.id}",
                purpose="HOPERAT",
            )
        )
        window = TimelineFilter(start=event.occurred_at - NEIGHBOURHOOD, end=event.occurred_at + NEIGHBOURHOOD)
        return self.access.all_entries(case.patient_id, window)
