"""Data subject requests: the one owner of every request's state.

Routes and workers call this service only; it loads a request under a row lock, asks
``lifecycle.step`` for the next state, writes it with a timeline event and a ledger entry in
the same transaction, and queues notifications and jobs there too (they go out after commit).
Workers are idempotent: a job re-run after a crash resumes, and the result becomes visible to
the patient in one final transaction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import structlog
from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from portal.access.service import AccessLog
from portal.accounts.models import StepUpEvidence
from portal.accounts.service import STEP_UP_FRESHNESS, AccountService
from portal.audit.ledger import AuditEvent, Ledger
from portal.consent.models import ConsentEvent, ConsentPurpose
from portal.db import Database, new_id, retried_on_collision, unique_key, utcnow
from portal.dsar import deadlines
from portal.dsar.erasure import Eraser, PlanItem, Step
from portal.dsar.export import PSEUDONYM_SYSTEM, ExportBuilder, Scope, provenance
from portal.dsar.lifecycle import LABELS, Action, Kind, Snapshot, Status, TransitionError, is_final, step
from portal.dsar.models import (
    DataRequest,
    DeletionCertificate,
    ExportArchive,
    PolicySetting,
    Recipient,
    RequestApproval,
    RequestEvent,
)
from portal.dsar.signed import sign_document
from portal.jobs.models import Job, JobStatus
from portal.jobs.service import JobContext, JobRunner
from portal.notify import Notifier
from portal.records.categories import BY_CODE
from portal.security.crypto import FieldContext, decrypt_field, encrypt_field
from portal.security.keystore import KeyDestroyedError, KeyStore
from portal.security.sessions import WebSession
from portal.text import required_text

log = structlog.get_logger("portal.dsar")

EXPORT_JOB = "dsar.export"
ERASURE_JOB = "dsar.erasure"
TICK_JOB = "dsar.tick"
KEY_CATEGORY = "requests"  # request messages and export archives are encrypted under this key
EXPORT_AVAILABLE = timedelta(days=7)
AUTO_APPROVE_EXPORTS = "auto_approve_exports"
RECIPIENT_KEY = unique_key(cast(Table, Recipient.__table__), "name")
POLICIES = {AUTO_APPROVE_EXPORTS: "Approve exports by patients who confirmed it is them with a passkey"}
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}")
SYSTEM = "system:dsar"
ERASURE_METHOD = (
    "Cryptographic erasure: each erased category's AES-256 data key was destroyed in the separate key store "
    "and recorded in the erasure ledger, then its rows were deleted. Copies in backups cannot be decrypted, "
    "and restoring a backup re-applies the erasure."
)


class RequestError(ValueError):
    """A refusal with a message that is safe to show."""


class ErasureIncompleteError(RuntimeError):
    """Verification found readable data in an erased category; the job retries."""


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str
    text: str | None  # None when there is no text, or it was erased


@dataclass(frozen=True)
class RequestView:
    request: DataRequest
    timeline: list[TimelineItem]
    approvals: list[RequestApproval]
    deadlines: deadlines.Deadlines
    archive: ExportArchive | None
    certificate: dict[str, Any] | None
    evidence: StepUpEvidence | None

    @property
    def status_label(self) -> str:
        return LABELS[Status(self.request.status)]

    @property
    def plan(self) -> list[PlanItem]:
        return [PlanItem.from_json(item) for item in self.request.plan or []]


@dataclass(frozen=True)
class QueueFilter:
    kind: str | None = None
    status: str | None = None
    due: str | None = None  # overdue | soon
    assignee: str | None = None
    include_closed: bool = False


class RequestService:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        keys: KeyStore,
        accounts: AccountService,
        access: AccessLog,
        notifier: Notifier,
        jobs: JobRunner,
        exporter: ExportBuilder,
        eraser: Eraser,
        waiting_days: int,
        controller: str,
        contact: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.keys = keys
        self.accounts = accounts
        self.access = access
        self.notifier = notifier
        self.jobs = jobs
        self.exporter = exporter
        self.eraser = eraser
        self.waiting = timedelta(days=waiting_days)
        self.controller = controller
        self.contact = contact
        self.clock = clock
        jobs.register(EXPORT_JOB, lambda ctx: self.run_export(_request_id(ctx)))
        jobs.register(ERASURE_JOB, lambda ctx: self.run_erasure(_request_id(ctx)))
        jobs.register(TICK_JOB, lambda _ctx: self.tick())

    # ================================================================== patients

    def submit_export(self, web_session: WebSession, patient_id: str, scope: Scope) -> DataRequest:
        return self._submit(web_session, patient_id, Kind.export, scope)

    def submit_erasure(self, web_session: WebSession, patient_id: str) -> DataRequest:
        return self._submit(web_session, patient_id, Kind.erasure, Scope())

    def _submit(self, web_session: WebSession, patient_id: str, kind: Kind, scope: Scope) -> DataRequest:
        """Submitting needs a fresh step-up; that assertion is the identity-verification evidence."""
        self.accounts.require_fresh_stepup(web_session)
        account_id = web_session.subject_id
        actor = f"patient:{account_id}"
        now = self.clock()
        with self.db.write() as session:
            evidence = self._fresh_evidence(session, account_id)
            if self._open_request(session, patient_id, kind) is not None:
                raise RequestError(f"you already have an open {kind.value} request; see it on your requests page")
            request = DataRequest(
                id=new_id(),
                patient_id=patient_id,
                account_id=account_id,
                kind=kind.value,
                status=Status.submitted.value,
                scope=scope.to_json(),
                submitted_at=now,
                stepup_evidence_id=evidence.id,
                waiting_until=now + self.waiting if kind is Kind.erasure else None,
                paused_seconds=0,
                extended=False,
            )
            _refresh_deadlines(request)
            session.add(request)
            session.flush()
            self._event(session, request, actor, "submit", None, text=None, details={"scope": scope.describe()})
            self._transition(
                session, request, Action.verify, actor=actor, details={"stepup_evidence": evidence.id}, notify=False
            )
            if kind is Kind.export and self.policy(AUTO_APPROVE_EXPORTS):
                request.auto_approved = True
                request.decided_at = now
                self._transition(session, request, Action.auto_approve, actor=SYSTEM, notify=False)
                self._schedule(session, request)
            self._notify(session, request, "We received it")
        return request

    def cancel(self, patient_id: str, request_id: str, *, actor: str) -> None:
        with self.db.write() as session:
            request = self._own(session, patient_id, request_id)
            self._transition(session, request, Action.cancel, actor=actor)

    def reply(self, patient_id: str, request_id: str, text: str, *, actor: str) -> None:
        body = required_text(text, "write your reply", RequestError)
        with self.db.write() as session:
            request = self._own(session, patient_id, request_id)
            self._resume_clock(request)
            self._transition(session, request, Action.patient_reply, actor=actor, text=body, notify=False)

    def patient_requests(self, patient_id: str) -> list[DataRequest]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(DataRequest)
                    .where(DataRequest.patient_id == patient_id)
                    .order_by(DataRequest.submitted_at.desc())
                )
            )

    def open_request(self, patient_id: str, kind: Kind) -> DataRequest | None:
        with self.db.read() as session:
            return self._open_request(session, patient_id, kind)

    def download_export(self, web_session: WebSession, patient_id: str, request_id: str) -> tuple[bytes, str]:
        """The export ZIP after a fresh step-up; each download is in the ledger and the access history."""
        self.accounts.require_fresh_stepup(web_session)
        actor = f"patient:{web_session.subject_id}"
        with self.db.write() as session:
            request = self._own(session, patient_id, request_id)
            archive = session.get(ExportArchive, request.id)
            if archive is None or archive.body is None or archive.key_version is None:
                raise RequestError("this export is no longer available; you can ask for a new one")
            if archive.expires_at <= self.clock():
                raise RequestError("this export has expired; you can ask for a new one")
            try:
                dek = self.keys.key_version(patient_id, KEY_CATEGORY, archive.key_version)
            except KeyDestroyedError:
                raise RequestError("this export is no longer available; you can ask for a new one") from None
            data = decrypt_field(dek, archive.body, _archive_context(patient_id, request.id, archive.key_version))
            archive.downloads += 1
            self.ledger.append(
                session,
                AuditEvent(
                    action="dsar.export_downloaded",
                    actor=actor,
                    role="patient",
                    subject=patient_id,
                    object=f"request:{request.id}",
                    purpose="PATRQT",
                    details={"sha256": archive.sha256, "download": archive.downloads},
                ),
            )
            self.access.record_portal_read(
                session, patient_id=patient_id, actor=actor, role=None, purpose="PATRQT", categories=None
            )
        return data, f"my-health-data-{request.submitted_at:%Y-%m-%d}.zip"

    # ================================================================== officers

    def queue(self, flt: QueueFilter) -> list[DataRequest]:
        query = select(DataRequest).order_by(DataRequest.due_at)
        if not flt.include_closed and not flt.status:
            query = query.where(DataRequest.status.not_in([s.value for s in Status if is_final(s)]))
        if flt.kind:
            query = query.where(DataRequest.kind == flt.kind)
        if flt.status:
            query = query.where(DataRequest.status == flt.status)
        if flt.assignee:
            query = query.where(DataRequest.assignee == flt.assignee)
        now = self.clock()
        if flt.due == "overdue":
            query = query.where(DataRequest.due_at <= now)
        elif flt.due == "soon":
            query = query.where(DataRequest.due_at > now, DataRequest.due_at <= now + timedelta(days=7))
        with self.db.read() as session:
            return list(session.scalars(query.limit(500)))

    def counts(self) -> dict[str, int]:
        with self.db.read() as session:
            rows = session.execute(select(DataRequest.status, func.count()).group_by(DataRequest.status)).all()
            overdue = session.scalar(
                select(func.count())
                .select_from(DataRequest)
                .where(
                    DataRequest.due_at <= self.clock(),
                    DataRequest.status.not_in([s.value for s in Status if is_final(s)]),
                )
            )
        counts = {str(status): int(n) for status, n in rows}
        counts["overdue"] = int(overdue or 0)
        return counts

    def view(self, request_id: str, *, patient_id: str | None = None) -> RequestView:
        """A request with its timeline; with ``patient_id`` only that patient's own request."""
        with self.db.read() as session:
            request = session.get(DataRequest, request_id)
            if request is None or (patient_id is not None and request.patient_id != patient_id):
                raise RequestError("no such request")
            events = list(
                session.scalars(
                    select(RequestEvent).where(RequestEvent.request_id == request_id).order_by(RequestEvent.at)
                )
            )
            approvals = list(
                session.scalars(
                    select(RequestApproval).where(RequestApproval.request_id == request_id).order_by(RequestApproval.at)
                )
            )
            archive = session.get(ExportArchive, request_id)
            certificate = session.get(DeletionCertificate, request_id)
            evidence = session.get(StepUpEvidence, request.stepup_evidence_id) if request.stepup_evidence_id else None
        timeline = [
            TimelineItem(e.at, e.actor, e.action, e.from_status, e.to_status, self._open_text(request, e))
            for e in events
        ]
        return RequestView(
            request=request,
            timeline=timeline,
            approvals=approvals,
            deadlines=_deadlines(request),
            archive=archive,
            certificate=certificate.document if certificate else None,
            evidence=evidence,
        )

    def take(self, request_id: str, *, officer_id: str) -> None:
        with self.db.write() as session:
            request = self._locked(session, request_id)
            if request.status == Status.verified:
                self._transition(session, request, Action.review, actor=f"staff:{officer_id}", notify=False)
            elif is_final(Status(request.status)):
                raise RequestError("this request is closed")
            request.assignee = officer_id

    def ask_patient(self, request_id: str, question: str, *, officer_id: str) -> None:
        body = required_text(question, "write your question to the patient", RequestError)
        with self.db.write() as session:
            request = self._locked(session, request_id)
            self._transition(session, request, Action.ask_patient, actor=f"staff:{officer_id}", text=body)
            request.paused_at = self.clock()

    def approve(self, request_id: str, web_session: WebSession) -> Status:
        """Record this officer's approval (after a fresh step-up); the request moves on once enough
        different officers approved: one for an export, two for an erasure."""
        self.accounts.require_fresh_stepup(web_session)
        officer_id = web_session.subject_id
        with self.db.write() as session:
            evidence = self._fresh_evidence(session, officer_id)
            request = self._locked(session, request_id)
            if request.account_id == officer_id:
                raise RequestError("you cannot approve your own request")
            before = Status(request.status)
            after = self._transition(
                session,
                request,
                Action.approve,
                actor=f"staff:{officer_id}",
                officer=officer_id,
                details={"stepup_evidence": evidence.id},
                notify=False,
            )
            session.add(
                RequestApproval(
                    request_id=request.id, officer_id=officer_id, stepup_evidence_id=evidence.id, at=self.clock()
                )
            )
            if after is Status.approved:
                request.decided_at = self.clock()
                self._schedule(session, request)
                self._notify(session, request, "It was approved")
            elif before is Status.verified:
                request.assignee = request.assignee or officer_id
            return after

    def deny(self, request_id: str, reason: str, *, officer_id: str) -> None:
        body = required_text(reason, "give the reason the patient will see", RequestError)
        with self.db.write() as session:
            request = self._locked(session, request_id)
            self._resume_clock(request)
            self._transition(session, request, Action.deny, actor=f"staff:{officer_id}", text=body)
            request.decided_at = self.clock()

    def extend(self, request_id: str, reason: str, *, officer_id: str) -> None:
        """Extend once, with a reason the patient is told, and only before the first deadline passes."""
        body = required_text(reason, "give the reason for the extension", RequestError)
        with self.db.write() as session:
            request = self._locked(session, request_id)
            first = deadlines.compute(
                request.submitted_at, paused=timedelta(seconds=request.paused_seconds), extended=False
            )
            if self.clock() >= first.stricter:
                raise RequestError("the first deadline has passed; an extension had to be given before it")
            self._transition(session, request, Action.extend, actor=f"staff:{officer_id}", text=body)
            _refresh_deadlines(request)

    def recipients(self) -> list[Recipient]:
        with self.db.read() as session:
            return list(session.scalars(select(Recipient).order_by(Recipient.name)))

    def register_recipient(self, name: str, contact: str, *, actor: str) -> Recipient:
        """A downstream recipient that is told about erasures; the name matches a consent purpose's recipient."""
        name, contact = " ".join(name.split()), contact.strip()
        if not name or len(name) > 200:
            raise RequestError("give the recipient's name (as the consent purposes name it)")
        if not EMAIL.fullmatch(contact):
            raise RequestError("give the e-mail address where erasure notices go")

        def register() -> Recipient:
            with self.db.write() as session:
                row = session.scalars(select(Recipient).where(Recipient.name == name)).first()
                if row is None:
                    row = Recipient(name=name, contact=contact, active=True)
                    session.add(row)
                else:
                    row.contact, row.active = contact, True
                self.ledger.append(
                    session, AuditEvent(action="dsar.recipient_registered", actor=actor, object=f"recipient:{name}")
                )
            return row

        return retried_on_collision(register, RECIPIENT_KEY)  # registered twice at once: the second updates it

    def policy(self, name: str) -> bool:
        with self.db.read() as session:
            row = session.get(PolicySetting, name)
            return bool(row and row.value)

    def set_policy(self, name: str, value: bool, *, actor: str) -> None:
        if name not in POLICIES:
            raise RequestError("unknown policy")
        with self.db.write() as session:
            row = session.get(PolicySetting, name)
            if row is None:
                session.add(PolicySetting(name=name, value=value, updated_by=actor, updated_at=self.clock()))
            else:
                row.value, row.updated_by, row.updated_at = value, actor, self.clock()
            self.ledger.append(
                session,
                AuditEvent(
                    action="dsar.policy_changed", actor=actor, object=f"policy:{name}", details={"value": value}
                ),
            )

    # ================================================================== workers

    def run_export(self, request_id: str) -> dict[str, Any]:
        request = self._begin(request_id)
        if request is None:
            return {"skipped": True}
        started = request
        built = self.exporter.build(
            started.id,
            started.patient_id,
            Scope.from_json(started.scope),
            lambda percent, note: self._progress(started.id, percent, note),
        )
        now = self.clock()
        with self.db.write() as session:
            request = self._locked(session, request_id)
            if request.status != Status.processing or session.get(ExportArchive, request.id) is not None:
                return {"skipped": True}
            key = self.keys.data_key(request.patient_id, KEY_CATEGORY, create=True)
            session.add(
                ExportArchive(
                    request_id=request.id,
                    patient_id=request.patient_id,
                    key_version=key.version,
                    body=encrypt_field(
                        key.dek, built.data, _archive_context(request.patient_id, request.id, key.version)
                    ),
                    size=len(built.data),
                    sha256=hashlib.sha256(built.data).hexdigest(),
                    files=built.files,
                    created_at=now,
                    expires_at=now + EXPORT_AVAILABLE,
                )
            )
            request.outcome = {"counts": built.counts, "bytes": len(built.data)}
            request.progress, request.progress_note = 100, "Ready"
            request.completed_at = now
            self._transition(session, request, Action.complete, actor=SYSTEM, notify=False)
            self._notify(session, request, "Your export is ready to download for 7 days", action="download it")
        return {"bytes": len(built.data), "resources": sum(built.counts.values())}

    def run_erasure(self, request_id: str) -> dict[str, Any]:
        request = self._begin(request_id)
        if request is None:
            return {"skipped": True}
        plan = [PlanItem.from_json(item) for item in request.plan or []]
        for item in plan:
            if item.step is Step.erase:
                self.eraser.erase_category(
                    request.patient_id,
                    item.category,
                    request_id=request.id,
                    actor=SYSTEM,
                    on_erased=partial(self._record_erased, request.id, item.category),
                )
            elif item.step is Step.retain:
                self.eraser.restrict(request.patient_id, item, request_id=request.id)
        erased = self._erased_rows(request.id)
        self._progress(request.id, 70, "Checking nothing is left")
        self._purge_exports(request.patient_id, reason="erasure")
        checks = self.eraser.verify(request.patient_id, list(erased))
        if not all(check["ok"] for check in checks):
            raise ErasureIncompleteError(f"readable data remains after erasure of request {request.id}")
        return self._finish_erasure(request_id, plan, erased, checks)

    def _record_erased(self, request_id: str, category: str, session: Session, counts: dict[str, int]) -> None:
        """Add one pass's deleted rows to the plan item, in the deleting transaction. A pass resumed after
        a crash deletes nothing more, and the certificate must still state what the first pass erased."""
        request = self._locked(session, request_id)
        plan = [dict(item) for item in request.plan or []]
        for item in plan:
            if item["category"] == category:
                before = item.get("erased") or {}
                item["erased"] = {s: before.get(s, 0) + counts.get(s, 0) for s in sorted(before.keys() | counts.keys())}
        request.plan = plan

    def _erased_rows(self, request_id: str) -> dict[str, dict[str, int]]:
        """Category -> source -> rows deleted, over every pass of this erasure."""
        with self.db.read() as session:
            request = session.get(DataRequest, request_id)
            plan = (request.plan if request else None) or []
        return {item["category"]: dict(item.get("erased") or {}) for item in plan if item["step"] == Step.erase}

    def _finish_erasure(
        self, request_id: str, plan: list[PlanItem], erased: dict[str, dict[str, int]], checks: list[dict[str, Any]]
    ) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as session:
            request = self._locked(session, request_id)
            if request.status != Status.processing:
                return {"skipped": True}
            recipients = self._recipients(session, request.patient_id)
            document = self._certificate(
                session, request=request, plan=plan, erased=erased, checks=checks, recipients=recipients, now=now
            )
            session.add(DeletionCertificate(request_id=request.id, document=document, created_at=now))
            request.outcome = {
                "erased": {category: sum(counts.values()) for category, counts in erased.items()},
                "retained": [item.category for item in plan if item.step is Step.retain],
                "verified": True,
            }
            request.progress, request.progress_note, request.completed_at = 100, "Done", now
            retained = any(item.step is Step.retain for item in plan)
            action = Action.complete_partially if retained else Action.complete
            self._transition(session, request, action, actor=SYSTEM, notify=False)
            self._notify(session, request, "Your deletion certificate is ready", action="see the certificate")
            for recipient in recipients:
                self.notifier.notify_address(
                    session,
                    recipient.contact,
                    "erasure_recipient",
                    key=request.id,
                    request_id=request.id,
                    recipient=recipient.name,
                    subject=request.patient_id,
                    categories=", ".join(sorted(erased)) or "none",
                    contact=self.contact,
                )
        return {"erased": sorted(erased), "checks": len(checks)}

    def _certificate(
        self,
        session: Session,
        *,
        request: DataRequest,
        plan: list[PlanItem],
        erased: dict[str, dict[str, int]],
        checks: list[dict[str, Any]],
        recipients: list[Recipient],
        now: datetime,
    ) -> dict[str, Any]:
        approvals = session.scalars(select(RequestApproval).where(RequestApproval.request_id == request.id)).all()
        document = {
            "type": "deletion-certificate",
            "version": 1,
            "request": request.id,
            "subject": request.patient_id,
            "issuer": self.controller,
            "requested_at": _iso(request.submitted_at),
            "identity_verification": {"method": "passkey step-up (WebAuthn)", "evidence": request.stepup_evidence_id},
            "approved_by": [
                {"officer": a.officer_id, "name": self.accounts.staff_name(a.officer_id), "at": _iso(a.at)}
                for a in approvals
            ],
            "erased": [
                {"category": c, "title": BY_CODE[c].title, "rows": sum(counts.values()), "sources": counts}
                for c, counts in sorted(erased.items())
            ],
            "retained": [
                {
                    "category": item.category,
                    "title": item.title,
                    "basis": item.basis,
                    "retain_until": item.retain_until.isoformat() if item.retain_until else None,
                }
                for item in plan
                if item.step is Step.retain
            ],
            "method": ERASURE_METHOD,
            "verification": {"checked_at": _iso(now), "passed": all(c["ok"] for c in checks), "checks": checks},
            "recipients_notified": [r.name for r in recipients],
            "completed_at": _iso(now),
            "provenance": provenance(
                {"identifier": {"system": PSEUDONYM_SYSTEM, "value": request.patient_id}},
                operation="DELETE",
                text=f"Erasure of the patient's data at their request {request.id}",
                controller=self.controller,
                now=now,
            ),
        }
        return sign_document(document, self.keys.signing_key())

    def certificate(self, request_id: str, *, patient_id: str | None = None) -> dict[str, Any]:
        view = self.view(request_id, patient_id=patient_id)
        if view.certificate is None:
            raise RequestError("this request has no deletion certificate")
        return view.certificate

    def _begin(self, request_id: str) -> DataRequest | None:
        """Move an approved request to processing (or resume one); None when there is nothing to do."""
        with self.db.read() as session:
            request = session.get(DataRequest, request_id)
        if request is None or request.status not in (Status.approved, Status.processing):
            return None
        if request.status == Status.processing and (request.plan is not None or request.kind == Kind.export):
            return request
        if request.waiting_until is not None and request.waiting_until > self.clock():
            return None  # woken early; ``tick`` schedules it again once the waiting period is over
        plan = self.eraser.plan(request.patient_id) if request.kind == Kind.erasure else None
        with self.db.write() as session:
            request = self._locked(session, request_id)
            if request.status == Status.approved:
                self._transition(session, request, Action.start, actor=SYSTEM, notify=False)
                request.progress, request.progress_note = 5, "Started"
            if request.status != Status.processing:
                return None
            if plan is not None and request.plan is None:
                request.plan = [item.to_json() for item in plan]
            session.flush()
            session.expunge(request)
            return request

    def _progress(self, request_id: str, percent: int, note: str) -> None:
        with self.db.write() as session:
            session.execute(
                update(DataRequest)
                .where(DataRequest.id == request_id, DataRequest.status == Status.processing)
                .values(progress=percent, progress_note=note[:80])
            )

    def tick(self) -> dict[str, Any]:
        """Hourly: purge exports past their window, erase retained categories whose date has come."""
        purged = self._purge_exports(None, reason="expired")
        rescheduled = self._reschedule_stalled()
        swept = 0
        for restriction in self.eraser.due_restrictions():
            self.eraser.erase_category(
                restriction.patient_id,
                restriction.category,
                request_id=restriction.request_id,
                actor="system:retention",
            )
            swept += 1
        return {"exports_purged": purged, "categories_swept": swept, "rescheduled": rescheduled}

    def _reschedule_stalled(self) -> int:
        """Give a new job to requests that should be moving but have none queued or running: approved
        ones whose job woke before the waiting period ended, and ones whose worker gave up (retried
        hourly, and visible to staff as stalled meanwhile)."""
        now = self.clock()
        waiting_over = DataRequest.waiting_until.is_(None) | (DataRequest.waiting_until <= now)
        with self.db.write() as session:
            candidates = session.scalars(
                select(DataRequest).where(
                    ((DataRequest.status == Status.approved) & waiting_over) | (DataRequest.status == Status.processing)
                )
            ).all()
            stalled = [request for request in candidates if not self._has_live_job(session, request)]
            for request in stalled:
                self._schedule(session, request, attempt=f"{now:%Y%m%d%H}")
        return len(stalled)

    def _has_live_job(self, session: Session, request: DataRequest) -> bool:
        return bool(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.idempotency_key.startswith(f"{_job_kind(request)}:{request.id}:"),
                    Job.status.in_([JobStatus.queued, JobStatus.running]),
                )
            )
        )

    def stalled(self, request: DataRequest) -> bool:
        """A request that should be moving but has no job queued or running (e.g. its worker gave up)."""
        if request.status not in (Status.approved, Status.processing):
            return False
        if request.waiting_until is not None and request.waiting_until > self.clock():
            return False
        with self.db.read() as session:
            return not self._has_live_job(session, request)

    def _purge_exports(self, patient_id: str | None, *, reason: str) -> int:
        now = self.clock()
        query = select(ExportArchive).where(ExportArchive.body.is_not(None))
        query = (
            query.where(ExportArchive.patient_id == patient_id)
            if patient_id
            else query.where(ExportArchive.expires_at <= now)
        )
        with self.db.write() as session:
            archives = list(session.scalars(query))
            for archive in archives:
                archive.body, archive.key_version, archive.purged_at = None, None, now
                self.ledger.append(
                    session,
                    AuditEvent(
                        action="dsar.export_purged",
                        actor=SYSTEM,
                        subject=archive.patient_id,
                        object=f"request:{archive.request_id}",
                        details={"reason": reason},
                    ),
                )
        return len(archives)

    # ================================================================== internals

    def _transition(
        self,
        session: Session,
        request: DataRequest,
        action: Action,
        *,
        actor: str,
        officer: str | None = None,
        text: str | None = None,
        details: dict[str, Any] | None = None,
        notify: bool = True,
    ) -> Status:
        approvers = frozenset(
            session.scalars(select(RequestApproval.officer_id).where(RequestApproval.request_id == request.id))
        )
        before = Snapshot(Kind(request.kind), Status(request.status), approvers, request.extended)
        try:
            after = step(before, action, officer=officer)
        except TransitionError as exc:
            raise RequestError(str(exc)) from None
        request.status, request.extended = after.status.value, after.extended
        self._event(session, request, actor, action.value, before.status.value, text=text, details=details)
        if notify:
            self._notify(session, request, _NOTES.get(action, ""))
        return after.status

    def _event(
        self,
        session: Session,
        request: DataRequest,
        actor: str,
        action: str,
        from_status: str | None,
        *,
        text: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        event_id = new_id()
        seq = self.ledger.append(
            session,
            AuditEvent(
                action=f"dsar.{action}",
                actor=actor,
                role="system" if actor.startswith("system") else None,
                subject=request.patient_id,
                object=f"request:{request.id}",
                purpose="PATRQT",
                details={"kind": request.kind, "from": from_status, "to": request.status, **(details or {})},
                payload=text,
            ),
        )
        version, blob = (None, None) if text is None else self._seal(request.patient_id, event_id, text)
        session.add(
            RequestEvent(
                id=event_id,
                request_id=request.id,
                at=self.clock(),
                actor=actor,
                action=action,
                from_status=from_status,
                to_status=request.status,
                ledger_seq=seq,
                key_version=version,
                text=blob,
            )
        )

    def _seal(self, patient_id: str, event_id: str, text: str) -> tuple[int, bytes]:
        key = self.keys.data_key(patient_id, KEY_CATEGORY, create=True)
        return key.version, encrypt_field(key.dek, text.encode(), _text_context(patient_id, event_id, key.version))

    def _open_text(self, request: DataRequest, event: RequestEvent) -> str | None:
        if event.text is None or event.key_version is None:
            return None
        try:
            dek = self.keys.key_version(request.patient_id, KEY_CATEGORY, event.key_version)
        except KeyDestroyedError:
            return None
        return decrypt_field(dek, event.text, _text_context(request.patient_id, event.id, event.key_version)).decode()

    def _notify(self, session: Session, request: DataRequest, note: str, *, action: str = "") -> None:
        self.notifier.notify(
            session,
            request.account_id,
            "request_update",
            key=f"{request.id}:{request.status}:{self.clock().isoformat()}",
            kind=request.kind,
            status=LABELS[Status(request.status)].lower(),
            note=note,
            request_id=request.id,
            action=action,
        )

    def _schedule(self, session: Session, request: DataRequest, *, attempt: str = "") -> None:
        kind = _job_kind(request)
        self.jobs.enqueue(
            session,
            kind,
            {"request_id": request.id},
            idempotency_key=f"{kind}:{request.id}:{attempt}",
            not_before=request.waiting_until,
        )

    def _resume_clock(self, request: DataRequest) -> None:
        if request.paused_at is not None:
            request.paused_seconds += int((self.clock() - request.paused_at).total_seconds())
            request.paused_at = None
            _refresh_deadlines(request)

    def _fresh_evidence(self, session: Session, account_id: str) -> StepUpEvidence:
        evidence = session.scalars(
            select(StepUpEvidence)
            .where(StepUpEvidence.account_id == account_id)
            .order_by(StepUpEvidence.created_at.desc())
            .limit(1)
        ).first()
        if evidence is None or self.clock() - evidence.created_at > STEP_UP_FRESHNESS:
            raise RequestError("confirm it is you with your passkey first")
        return evidence

    def _open_request(self, session: Session, patient_id: str, kind: Kind) -> DataRequest | None:
        return session.scalars(
            select(DataRequest).where(
                DataRequest.patient_id == patient_id,
                DataRequest.kind == kind.value,
                DataRequest.status.not_in([s.value for s in Status if is_final(s)]),
            )
        ).first()

    def _own(self, session: Session, patient_id: str, request_id: str) -> DataRequest:
        request = self._locked(session, request_id)
        if request.patient_id != patient_id:
            raise RequestError("no such request")
        return request

    def _locked(self, session: Session, request_id: str) -> DataRequest:
        request = session.get(DataRequest, request_id, with_for_update=True, populate_existing=True)
        if request is None:
            raise RequestError("no such request")
        return request

    def _recipients(self, session: Session, patient_id: str) -> list[Recipient]:
        """Recipients of purposes the patient ever agreed to: they may hold copies (GDPR Art. 19)."""
        granted = session.scalars(
            select(ConsentPurpose.recipients)
            .join(ConsentEvent, ConsentEvent.purpose_code == ConsentPurpose.code)
            .where(ConsentEvent.patient_id == patient_id, ConsentEvent.event == "grant")
            .distinct()
        ).all()
        names = {name.strip() for joined in granted for name in joined.split(";") if name.strip()}
        if not names:
            return []
        return list(session.scalars(select(Recipient).where(Recipient.name.in_(names), Recipient.active.is_(True))))


_NOTES = {
    Action.ask_patient: "The privacy office has a question for you",
    Action.deny: "The privacy office declined it; the page explains why and how to complain",
    Action.extend: "The privacy office needs more time; the page explains why",
    Action.cancel: "You cancelled it",
}


def _job_kind(request: DataRequest) -> str:
    return EXPORT_JOB if request.kind == Kind.export else ERASURE_JOB


def _request_id(ctx: JobContext) -> str:
    return str(ctx.payload["request_id"])


def _refresh_deadlines(request: DataRequest) -> None:
    due = _deadlines(request)
    request.gdpr_due_at, request.hipaa_due_at, request.due_at = due.gdpr, due.hipaa, due.stricter


def _deadlines(request: DataRequest) -> deadlines.Deadlines:
    return deadlines.compute(
        request.submitted_at, paused=timedelta(seconds=request.paused_seconds or 0), extended=bool(request.extended)
    )


def _text_context(patient_id: str, event_id: str, version: int) -> FieldContext:
    return FieldContext(
        patient_id=patient_id, table="data_request_events", column="text", row_id=event_id, key_version=version
    )


def _archive_context(patient_id: str, request_id: str, version: int) -> FieldContext:
    return FieldContext(
        patient_id=patient_id, table="export_archives", column="body", row_id=request_id, key_version=version
    )


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
