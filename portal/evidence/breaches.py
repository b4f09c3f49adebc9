"""The breach register: suspected breaches, their notification clocks, affected patients and notices.

Clocks run from discovery: GDPR Art. 33 gives 72 hours to tell the supervisory authority, HIPAA
45 CFR 164.404 at most 60 days to tell the individuals. Affected patients come from the audit
ledger: the subjects of entries in the breach window (optionally only those by one actor).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.ledger import AuditEvent, Ledger, LedgerEntry
from portal.db import Database, new_id
from portal.evidence.models import Breach, BreachEvent, BreachSubject
from portal.records.models import Patient
from portal.text import required_text

GDPR_AUTHORITY = timedelta(hours=72)
HIPAA_INDIVIDUALS = timedelta(days=60)
STATUSES = {
    "suspected": "Suspected",
    "confirmed": "Confirmed breach",
    "not_a_breach": "Not a breach",
    "closed": "Closed",
}
LOOKUP_CHUNK = 500


class BreachError(ValueError):
    """A refusal with a message that is safe to show."""


@dataclass(frozen=True)
class Deadline:
    law: str
    what: str
    due: datetime
    remaining: timedelta

    @property
    def overdue(self) -> bool:
        return self.remaining <= timedelta(0)


@dataclass(frozen=True)
class BreachView:
    breach: Breach
    events: list[BreachEvent]
    affected: int
    notified: int
    deadlines: list[Deadline]


def deadlines(breach: Breach, now: datetime) -> list[Deadline]:
    gdpr = breach.discovered_at + GDPR_AUTHORITY
    hipaa = breach.discovered_at + HIPAA_INDIVIDUALS
    return [
        Deadline("GDPR Art. 33", "notify the supervisory authority", gdpr, gdpr - now),
        Deadline("HIPAA 45 CFR 164.404", "notify the affected individuals", hipaa, hipaa - now),
    ]


class BreachRegister:
    def __init__(self, *, db: Database, ledger: Ledger) -> None:
        self.db = db
        self.ledger = ledger

    def record(
        self,
        *,
        title: str,
        description: str,
        discovered_at: datetime,
        window_start: datetime,
        window_end: datetime,
        actor_filter: str | None,
        actor: str,
        now: datetime,
    ) -> Breach:
        """Register a suspected breach and find the patients it may affect from the ledger."""
        if window_end <= window_start:
            raise BreachError("the end of the window must be after its start")
        if discovered_at > now:
            raise BreachError("the discovery time cannot be in the future")
        breach = Breach(
            id=new_id(),
            title=required_text(title, "give the breach a short title", BreachError, 200),
            description=required_text(description, "describe what happened (without patient details)", BreachError),
            discovered_at=discovered_at,
            window_start=window_start,
            window_end=window_end,
            actor=(actor_filter or "").strip() or None,
            status="suspected",
            recorded_by=actor,
            recorded_at=now,
        )
        with self.db.write() as session:
            session.add(breach)
            session.flush()
            affected = self._affected(session, window_start, window_end, breach.actor)
            session.add_all(
                BreachSubject(breach_id=breach.id, patient_id=patient, entries=n) for patient, n in affected.items()
            )
            self.ledger.append(
                session,
                AuditEvent(
                    action="breach.recorded",
                    actor=actor,
                    object=f"breach:{breach.id}",
                    details={"affected": len(affected)},
                ),
            )
        return breach

    def _affected(self, session: Session, start: datetime, end: datetime, actor: str | None) -> Counter[str]:
        """Patients behind the subjects of ledger entries in the window: patient ids, or patients' account ids."""
        rows = session.execute(
            select(LedgerEntry.subject, LedgerEntry.entry).where(
                LedgerEntry.created_at >= start, LedgerEntry.created_at <= end, LedgerEntry.subject.is_not(None)
            )
        ).all()
        subjects = Counter(
            str(subject) for subject, entry in rows if actor is None or json.loads(entry).get("actor") == actor
        )
        patients: Counter[str] = Counter()
        for chunk in _chunks(list(subjects)):
            for patient_id in session.scalars(select(Patient.id).where(Patient.id.in_(chunk))):
                patients[patient_id] += subjects[patient_id]
            linked = select(Account.id, Account.patient_id).where(
                Account.id.in_(chunk), Account.patient_id.is_not(None)
            )
            for account_id, linked_patient in session.execute(linked):
                patients[str(linked_patient)] += subjects[account_id]
        return patients

    def decide(self, breach_id: str, status: str, text: str, *, actor: str, now: datetime) -> None:
        if status not in STATUSES:
            raise BreachError("choose a status")
        with self.db.write() as session:
            breach = self._breach(session, breach_id)
            breach.status = status
            self._event(
                session,
                breach,
                "decision",
                f"{STATUSES[status]}: {required_text(text, 'give the reason', BreachError)}",
                actor=actor,
                now=now,
            )

    def record_notification(self, breach_id: str, text: str, *, actor: str, now: datetime) -> None:
        """A notification sent outside the portal (to the authority, HHS, the media…), with when and to whom."""
        with self.db.write() as session:
            breach = self._breach(session, breach_id)
            self._event(
                session,
                breach,
                "notification",
                required_text(text, "say who was notified and how", BreachError),
                actor=actor,
                now=now,
            )

    def notify_patients(self, breach_id: str, notice: str, *, actor: str, now: datetime) -> int:
        """Show ``notice`` to every affected patient in the portal; returns how many were newly told."""
        with self.db.write() as session:
            breach = self._breach(session, breach_id)
            breach.patient_notice = required_text(notice, "write the notice patients will read", BreachError)
            subjects = list(
                session.scalars(
                    select(BreachSubject).where(
                        BreachSubject.breach_id == breach_id, BreachSubject.notified_at.is_(None)
                    )
                )
            )
            for subject in subjects:
                subject.notified_at = now
            self._event(
                session,
                breach,
                "notification",
                f"{len(subjects)} affected patient(s) notified in the portal",
                actor=actor,
                now=now,
            )
        return len(subjects)

    def _event(self, session: Session, breach: Breach, kind: str, text: str, *, actor: str, now: datetime) -> None:
        session.add(BreachEvent(id=new_id(), breach_id=breach.id, kind=kind, text=text, actor=actor, at=now))
        self.ledger.append(
            session,
            AuditEvent(
                action=f"breach.{kind}", actor=actor, object=f"breach:{breach.id}", details={"status": breach.status}
            ),
        )

    def _breach(self, session: Session, breach_id: str) -> Breach:
        breach = session.get(Breach, breach_id, with_for_update=True)
        if breach is None:
            raise BreachError("no such breach")
        return breach

    # ------------------------------------------------------------------ reading

    def register(self) -> list[Breach]:
        with self.db.read() as session:
            return list(session.scalars(select(Breach).order_by(Breach.discovered_at.desc())))

    def view(self, breach_id: str, now: datetime) -> BreachView:
        with self.db.read() as session:
            breach = session.get(Breach, breach_id)
            if breach is None:
                raise BreachError("no such breach")
            events = list(
                session.scalars(select(BreachEvent).where(BreachEvent.breach_id == breach_id).order_by(BreachEvent.at))
            )
            subjects = list(session.scalars(select(BreachSubject).where(BreachSubject.breach_id == breach_id)))
        return BreachView(
            breach=breach,
            events=events,
            affected=len(subjects),
            notified=sum(1 for s in subjects if s.notified_at is not None),
            deadlines=deadlines(breach, now),
        )

    def notices_for(self, patient_id: str) -> list[Breach]:
        """Breaches this patient was told about in the portal."""
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(Breach)
                    .join(BreachSubject, BreachSubject.breach_id == Breach.id)
                    .where(BreachSubject.patient_id == patient_id, BreachSubject.notified_at.is_not(None))
                    .order_by(Breach.discovered_at.desc())
                )
            )


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]
