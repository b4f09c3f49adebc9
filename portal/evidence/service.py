"""Evidence packs for regulators: built by a job, shared for a period, every download in the ledger.

Also the owner of the regulator recipients (and the checkpoint each last received, which makes
them witnesses of the audit ledger); compliance reports and the breach register hang off it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from portal.access.cases import CaseError, CaseService
from portal.accounts.models import Account, StepUpEvidence
from portal.accounts.service import AccountService
from portal.audit.ledger import AuditEvent, Ledger, LedgerEntry
from portal.db import Database, new_id, utcnow
from portal.dsar.export import to_csv
from portal.dsar.models import DataRequest
from portal.dsar.service import RequestError, RequestService
from portal.evidence import pack as layout
from portal.evidence.breaches import BreachRegister
from portal.evidence.models import EvidencePack, PackShare, RegulatorRecipient
from portal.evidence.reports import ComplianceReports
from portal.jobs.models import JobStatus
from portal.jobs.service import JobRunner
from portal.pdf import PdfRenderer
from portal.security.crypto import public_key_fingerprint
from portal.security.keystore import KeyStore
from portal.security.sessions import WebSession

PACK_JOB = "evidence.pack"
SCOPES = ("request", "case", "period")
MAX_SHARE_DAYS = 90
MAX_TEXT = 200


class EvidenceError(ValueError):
    """A refusal with a message that is safe to show."""


@dataclass(frozen=True)
class SharedPack:
    share: PackShare
    pack: EvidencePack


class EvidenceService:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        keys: KeyStore,
        accounts: AccountService,
        requests: RequestService,
        cases: CaseService,
        jobs: JobRunner,
        pdf: PdfRenderer,
        origin: str,
        controller: str,
        contact: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.keys = keys
        self.accounts = accounts
        self.requests = requests
        self.cases = cases
        self.jobs = jobs
        self.pdf = pdf
        self.origin = origin
        self.controller = controller
        self.clock = clock
        self.reports = ComplianceReports(db=db, requests=requests, pdf=pdf, controller=controller, contact=contact)
        self.breaches = BreachRegister(db=db, ledger=ledger)
        jobs.register(PACK_JOB, lambda ctx: self.build(str(ctx.payload["pack_id"])))

    # ================================================================== regulators (admins)

    def add_regulator(self, authority: str, contact: str, case_reference: str, *, actor: str) -> RegulatorRecipient:
        recipient = RegulatorRecipient(
            id=new_id(),
            authority=_required(authority, "the authority's name"),
            contact=_required(contact, "a contact address"),
            case_reference=_required(case_reference, "the case reference"),
            created_by=actor,
            created_at=self.clock(),
        )
        with self.db.write() as session:
            session.add(recipient)
            self.ledger.append(
                session,
                AuditEvent(
                    action="evidence.regulator_added",
                    actor=actor,
                    object=f"regulator:{recipient.id}",
                    details={"case_reference": recipient.case_reference},
                ),
            )
        return recipient

    def invite_regulator(self, recipient_id: str, email: str, name: str, *, actor: str) -> str:
        """A regulator account (passkey, ``regulator`` role) for this recipient; returns its enrolment link."""
        with self.db.read() as session:
            self._recipient(session, recipient_id)
        link = self.accounts.create_staff(email, "regulator", name, actor=actor)
        with self.db.write() as session:
            recipient = self._recipient(session, recipient_id)
            account = session.scalars(select(Account).where(Account.email == email.strip().lower())).one()
            recipient.account_id = account.id
        return link

    def regulators(self) -> list[RegulatorRecipient]:
        with self.db.read() as session:
            return list(session.scalars(select(RegulatorRecipient).order_by(RegulatorRecipient.authority)))

    def regulator_for_account(self, account_id: str) -> RegulatorRecipient | None:
        with self.db.read() as session:
            return session.scalars(
                select(RegulatorRecipient).where(
                    RegulatorRecipient.account_id == account_id, RegulatorRecipient.active.is_(True)
                )
            ).first()

    def fingerprint(self) -> str:
        return public_key_fingerprint(self.keys.signing_key().public_key())

    # ================================================================== packs (officers)

    def request_pack(
        self, scope_kind: str, scope: dict[str, str], *, recipient_id: str | None, actor: str
    ) -> EvidencePack:
        """Check the scope now (a clear error beats a failed job), then queue the build."""
        clean = self._checked_scope(scope_kind, scope)
        pack = EvidencePack(
            id=new_id(),
            scope_kind=scope_kind,
            scope=clean,
            recipient_id=recipient_id or None,
            status="queued",
            requested_by=actor,
            requested_at=self.clock(),
        )
        with self.db.write() as session:
            if pack.recipient_id is not None:
                self._recipient(session, pack.recipient_id)
            session.add(pack)
            session.flush()
            self.jobs.enqueue(session, PACK_JOB, {"pack_id": pack.id}, idempotency_key=f"{PACK_JOB}:{pack.id}")
            self.ledger.append(
                session,
                AuditEvent(
                    action="evidence.pack_requested",
                    actor=actor,
                    object=f"pack:{pack.id}",
                    details={"scope": scope_kind, **clean},
                ),
            )
        return pack

    def _checked_scope(self, scope_kind: str, scope: dict[str, str]) -> dict[str, str]:
        if scope_kind == "request":
            try:
                self.requests.view(scope.get("request", "").strip())
            except RequestError:
                raise EvidenceError("there is no request with that reference") from None
            return {"request": scope["request"].strip()}
        if scope_kind == "case":
            try:
                self.cases.view(scope.get("case", "").strip())
            except CaseError:
                raise EvidenceError("there is no access case with that reference") from None
            return {"case": scope["case"].strip()}
        if scope_kind == "period":
            start, end = _day(scope.get("start")), _day(scope.get("end"))
            if start is None or end is None or end < start:
                raise EvidenceError("give the first and last day of the period (YYYY-MM-DD), in order")
            return {"start": start.isoformat(), "end": end.isoformat()}
        raise EvidenceError("choose what the pack covers: a request, an access case or a period")

    def build(self, pack_id: str) -> dict[str, Any]:
        """The job: gather, prove, render, sign, store. A re-run of a finished pack does nothing."""
        with self.db.read() as session:
            pack = session.get(EvidencePack, pack_id)
            if pack is None or pack.status == "ready":
                return {"skipped": True}
            recipient = session.get(RegulatorRecipient, pack.recipient_id) if pack.recipient_id else None
        now = self.clock()
        records, cases, certificates, seqs = self._gather(pack)
        ledger = self._ledger_evidence(seqs, recipient)
        key = self.keys.signing_key()
        meta = {
            "pack": pack.id,
            "issuer": self.controller,
            "scope": {"kind": pack.scope_kind, **pack.scope},
            "recipient": _recipient_meta(recipient),
        }
        files = {
            "report.pdf": self.pdf.render(
                "evidence_pack.html",
                meta=meta,
                records=records,
                cases=cases,
                ledger=ledger,
                fingerprint=public_key_fingerprint(key.public_key()),
                generated=now,
                controller=self.controller,
            ),
            "requests.json": layout.json_bytes({**meta, "requests": records, "access_cases": cases}),
            "requests.csv": to_csv(layout.request_rows(records)),
            **{f"certificates/{rid}.json": layout.json_bytes(document) for rid, document in certificates.items()},
            **layout.ledger_files(ledger, self.origin),
        }
        data = layout.assemble(files, key, meta, now)
        with self.db.write() as session:
            row = session.get(EvidencePack, pack_id, with_for_update=True)
            if row is None or row.status == "ready":
                return {"skipped": True}
            row.body, row.size, row.sha256 = data, len(data), hashlib.sha256(data).hexdigest()
            row.files = {name: len(content) for name, content in sorted(files.items())}
            row.status, row.built_at = "ready", now
            row.checkpoint_size, row.checkpoint_note = ledger.tree_size, ledger.checkpoint_note
            self.ledger.append(
                session,
                AuditEvent(
                    action="evidence.pack_built",
                    actor="system:evidence",
                    role="system",
                    object=f"pack:{pack_id}",
                    details={"sha256": row.sha256, "entries": len(ledger.entries), "tree_size": ledger.tree_size},
                ),
            )
        return {"bytes": len(data), "entries": len(ledger.entries)}

    def _gather(
        self, pack: EvidencePack
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]], set[int]]:
        now = self.clock()
        records: list[dict[str, Any]] = []
        cases: list[dict[str, Any]] = []
        certificates: dict[str, dict[str, Any]] = {}
        seqs: set[int] = set()
        for request_id in self._request_ids(pack):
            view = self.requests.view(request_id)
            approvals = self._approvals(view.approvals)
            records.append(
                layout.request_record(view, approvals=approvals, staff_name=self.accounts.staff_name, now=now)
            )
            if view.certificate:
                certificates[request_id] = view.certificate
            seqs |= self._seqs_for(view.request.patient_id, "dsar.", f"request:{request_id}")
            stepups = [view.evidence, *(evidence for *_rest, evidence in approvals)]
            seqs |= {evidence.ledger_seq for evidence in stepups if evidence is not None}
        if pack.scope_kind == "case":
            case_view = self.cases.view(pack.scope["case"])
            cases.append(layout.case_record(case_view, self.accounts.staff_name))
            seqs |= self._seqs_for(case_view.case.patient_id, "access.case", f"case:{case_view.case.id}")
        return records, cases, certificates, seqs

    def _request_ids(self, pack: EvidencePack) -> list[str]:
        if pack.scope_kind == "request":
            return [pack.scope["request"]]
        if pack.scope_kind != "period":
            return []
        start = datetime.fromisoformat(pack.scope["start"]).replace(tzinfo=self.clock().tzinfo)
        end = datetime.fromisoformat(pack.scope["end"]).replace(tzinfo=self.clock().tzinfo) + timedelta(days=1)
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(DataRequest.id)
                    .where(DataRequest.submitted_at >= start, DataRequest.submitted_at < end)
                    .order_by(DataRequest.submitted_at)
                )
            )

    def _approvals(self, approvals: list[Any]) -> list[tuple[str, str | None, datetime, StepUpEvidence | None]]:
        with self.db.read() as session:
            return [
                (
                    a.officer_id,
                    self.accounts.staff_name(a.officer_id),
                    a.at,
                    session.get(StepUpEvidence, a.stepup_evidence_id),
                )
                for a in approvals
            ]

    def _seqs_for(self, subject: str, action_prefix: str, obj: str) -> set[int]:
        """Ledger entries about one object: found by subject and action, then by the object in the entry."""
        with self.db.read() as session:
            rows = session.execute(
                select(LedgerEntry.seq, LedgerEntry.entry).where(
                    LedgerEntry.subject == subject, LedgerEntry.action.like(f"{action_prefix}%")
                )
            ).all()
        return {int(seq) for seq, entry in rows if json.loads(entry).get("object") == obj}

    def _ledger_evidence(self, seqs: set[int], recipient: RegulatorRecipient | None) -> layout.LedgerEvidence:
        """Sign a checkpoint now, prove every entry in it, and prove it extends what the regulator last got."""
        checkpoint = self.ledger.checkpoint()
        size = checkpoint.tree_size
        wanted = sorted(seq for seq in seqs if seq < size)
        with self.db.read() as session:
            entries = [
                bytes(entry)
                for entry in session.scalars(
                    select(LedgerEntry.entry).where(LedgerEntry.seq.in_(wanted)).order_by(LedgerEntry.seq)
                )
            ]
        previous = recipient.last_checkpoint_size if recipient else None
        has_previous = previous is not None and previous <= size and recipient is not None
        return layout.LedgerEvidence(
            entries=entries,
            inclusion=self.ledger.inclusion_proofs(wanted, size) if wanted else {},
            tree_size=size,
            checkpoint_note=checkpoint.note,
            verifier_key=self.ledger.verifier_key(),
            previous_note=recipient.last_checkpoint_note if has_previous and recipient else None,
            consistency=self.ledger.consistency_proof(previous, size)
            if has_previous and previous is not None
            else None,
            previous_size=previous if has_previous else None,
        )

    def build_failure(self, pack: EvidencePack) -> str | None:
        """Why a pack that is not ready will not become ready (its job gave up), or None."""
        if pack.status == "ready":
            return None
        job = self.jobs.find(f"{PACK_JOB}:{pack.id}")
        return (job.last_error or "the build failed") if job is not None and job.status == JobStatus.failed else None

    def packs(self) -> list[EvidencePack]:
        with self.db.read() as session:
            query = select(EvidencePack).options(defer(EvidencePack.body)).order_by(EvidencePack.requested_at.desc())
            return list(session.scalars(query.limit(200)))

    def pack(self, pack_id: str) -> EvidencePack:
        with self.db.read() as session:
            pack = session.get(EvidencePack, pack_id, options=[defer(EvidencePack.body)])
        if pack is None:
            raise EvidenceError("no such evidence pack")
        return pack

    # ================================================================== sharing and downloads

    def share(self, pack_id: str, recipient_id: str, days: int, web_session: WebSession) -> PackShare:
        """Make a pack visible to one regulator for ``days``; sharing evidence needs a fresh step-up."""
        self.accounts.require_fresh_stepup(web_session)
        if not 1 <= days <= MAX_SHARE_DAYS:
            raise EvidenceError(f"share for 1 to {MAX_SHARE_DAYS} days")
        actor = f"staff:{web_session.subject_id}"
        now = self.clock()
        with self.db.write() as session:
            pack = session.get(EvidencePack, pack_id)
            if pack is None or pack.status != "ready":
                raise EvidenceError("only a finished pack can be shared")
            recipient = self._recipient(session, recipient_id)
            if recipient.account_id is None:
                raise EvidenceError("this regulator has no account yet; invite one first, or deliver the file")
            share = PackShare(
                id=new_id(),
                pack_id=pack_id,
                recipient_id=recipient_id,
                shared_by=actor,
                shared_at=now,
                expires_at=now + timedelta(days=days),
                downloads=0,
            )
            session.add(share)
            self.ledger.append(
                session,
                AuditEvent(
                    action="evidence.pack_shared",
                    actor=actor,
                    role="privacy_officer",
                    object=f"pack:{pack_id}",
                    details={"regulator": recipient_id, "until": layout.iso(share.expires_at)},
                ),
            )
        return share

    def revoke_share(self, share_id: str, *, actor: str) -> None:
        with self.db.write() as session:
            share = session.get(PackShare, share_id, with_for_update=True)
            if share is None or share.revoked_at is not None:
                raise EvidenceError("no such live share")
            share.revoked_at = self.clock()
            self.ledger.append(
                session,
                AuditEvent(action="evidence.share_revoked", actor=actor, object=f"pack:{share.pack_id}"),
            )

    def shares(self, pack_id: str) -> list[PackShare]:
        with self.db.read() as session:
            return list(
                session.scalars(select(PackShare).where(PackShare.pack_id == pack_id).order_by(PackShare.shared_at))
            )

    def shared_with(self, account_id: str) -> list[SharedPack]:
        """The live shares of the regulator signed in with ``account_id`` (and nothing else)."""
        recipient = self.regulator_for_account(account_id)
        if recipient is None:
            return []
        with self.db.read() as session:
            rows = session.execute(
                select(PackShare, EvidencePack)
                .join(EvidencePack, EvidencePack.id == PackShare.pack_id)
                .options(defer(EvidencePack.body))
                .where(*self._live(recipient.id))
                .order_by(PackShare.shared_at.desc())
            ).all()
        return [SharedPack(share, pack) for share, pack in rows]

    def _live(self, recipient_id: str) -> tuple[Any, ...]:
        return (
            PackShare.recipient_id == recipient_id,
            PackShare.revoked_at.is_(None),
            PackShare.expires_at > self.clock(),
        )

    def download_shared(self, pack_id: str, *, account_id: str) -> tuple[bytes, str]:
        """A regulator's download: only through a live share to their own recipient record."""
        recipient = self.regulator_for_account(account_id)
        if recipient is None:
            raise EvidenceError("no such evidence pack")
        with self.db.write() as session:
            share = session.scalars(
                select(PackShare).where(PackShare.pack_id == pack_id, *self._live(recipient.id)).with_for_update()
            ).first()
            if share is None:
                raise EvidenceError("no such evidence pack")
            share.downloads += 1
            return self._deliver(session, pack_id, f"staff:{account_id}", "regulator", recipient.id)

    def download_file(self, pack_id: str, *, actor: str) -> tuple[bytes, str]:
        """An officer takes the pack as a file to deliver it another way (the pack's recipient is recorded)."""
        with self.db.write() as session:
            pack = session.get(EvidencePack, pack_id)
            recipient = pack.recipient_id if pack else None
            return self._deliver(session, pack_id, actor, "privacy_officer", recipient)

    def _deliver(
        self, session: Session, pack_id: str, actor: str, role: str, recipient_id: str | None
    ) -> tuple[bytes, str]:
        pack = session.get(EvidencePack, pack_id)
        if pack is None or pack.body is None:
            raise EvidenceError("no such evidence pack")
        self.ledger.append(
            session,
            AuditEvent(
                action="evidence.pack_downloaded",
                actor=actor,
                role=role,
                object=f"pack:{pack_id}",
                details={"sha256": pack.sha256, "regulator": recipient_id},
            ),
        )
        self._remember_checkpoint(session, pack, recipient_id)
        return bytes(pack.body), f"evidence-pack-{pack.requested_at:%Y-%m-%d}-{pack.id[:8]}.zip"

    def _remember_checkpoint(self, session: Session, pack: EvidencePack, recipient_id: str | None) -> None:
        """The regulator now holds this pack's checkpoint: the next pack for them proves it extends it."""
        if recipient_id is None or pack.checkpoint_size is None:
            return
        recipient = session.get(RegulatorRecipient, recipient_id, with_for_update=True)
        if recipient is not None and (recipient.last_checkpoint_size or -1) < pack.checkpoint_size:
            recipient.last_checkpoint_size, recipient.last_checkpoint_note = pack.checkpoint_size, pack.checkpoint_note

    def _recipient(self, session: Session, recipient_id: str) -> RegulatorRecipient:
        recipient = session.get(RegulatorRecipient, recipient_id)
        if recipient is None or not recipient.active:
            raise EvidenceError("no such regulator")
        return recipient


def _recipient_meta(recipient: RegulatorRecipient | None) -> dict[str, str] | None:
    if recipient is None:
        return None
    return {"authority": recipient.authority, "case_reference": recipient.case_reference}


def _required(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise EvidenceError(f"give {what}")
    if len(text) > MAX_TEXT:
        raise EvidenceError(f"keep {what} under {MAX_TEXT} characters")
    return text


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        return None
