"""Consent: purposes and notices, each patient's choices, signed receipts, FHIR Consent, decisions.

Every change is one transaction holding the history row, the current decision, its signed receipt
and its ledger entry: a change is never visible without its receipt, and two tabs changing the
same purpose at once both leave a history row (the decision row is locked while it changes).
Withdrawing takes exactly the same single step as granting (GDPR Art. 7(3)).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import anyio.to_thread
import nh3
from markdown_it import MarkdownIt
from sqlalchemy import Select, Table, and_, bindparam, func, select
from sqlalchemy.orm import Session

from portal.audit.ledger import AuditEvent, Ledger
from portal.cache import Missing, TtlCache
from portal.consent.defaults import DEFAULT_PURPOSES
from portal.consent.fhir import consent_resource
from portal.consent.models import ConsentDecision, ConsentEvent, ConsentPurpose, NoticeVersion
from portal.consent.receipts import ReceiptFacts, build_receipt, sign_receipt
from portal.db import Database, new_id, retried_on_collision, unique_key, utcnow
from portal.hot_reads import HotReads
from portal.records.models import CategoryRestriction, PatientIdentifier
from portal.records.service import RecordStore
from portal.security.keystore import KeyStore

EVENTS = {"grant": "granted", "withdraw": "withdrawn"}
CHANNELS = ("portal", "staff", "api")
DECISION_KEY = unique_key(cast(Table, ConsentDecision.__table__), "patient_id", "purpose_code")
PURPOSE_KEY = unique_key(cast(Table, ConsentPurpose.__table__), "code")
NOTICE_KEY = unique_key(cast(Table, NoticeVersion.__table__), "purpose_code", "version")
CONSENT_NAMESPACE = uuid.UUID("6c1f3d2e-5d0a-4c39-9f6e-8d1c2b7a4e10")
PURPOSE_CACHE_SECONDS = 5.0  # a newly published notice reaches decisions within this time
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False})


class ConsentError(ValueError):
    """A refusal with a message that is safe to show."""


class DecisionInputError(ValueError):
    """A bad decision-API parameter; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PurposeView:
    purpose: ConsentPurpose
    notice: NoticeVersion
    state: str  # granted | withdrawn | default
    permitted: bool
    seen_version: int | None
    needs_review: bool
    changed_at: datetime | None


@dataclass(frozen=True)
class Decision:
    decision: str  # permit | deny
    reason: str
    consent_reference: str
    purpose: str
    notice_version: int | None


def render_notice(text: str) -> str:
    """Notice Markdown as HTML: raw HTML is not rendered, and the result is sanitised again."""
    return nh3.clean(_MARKDOWN.render(text))


def notice_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ConsentService:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        records: RecordStore,
        keys: KeyStore,
        origin: str,
        controller: str,
        contact: str,
        hot: HotReads | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.hot = hot or HotReads(db)
        self.ledger = ledger
        self.records = records
        self.keys = keys
        self.origin = origin
        self.controller = controller
        self.contact = contact
        self.clock = clock
        self._purpose_cache: TtlCache[tuple[ConsentPurpose, NoticeVersion] | None] = TtlCache(PURPOSE_CACHE_SECONDS)

    # ================================================================== purposes and notices

    def ensure_defaults(self) -> int:
        """Create the default purposes with a published first notice; returns how many were added."""
        added = 0
        with self.db.write() as session:
            for default in DEFAULT_PURPOSES:
                if session.get(ConsentPurpose, default.code) is not None:
                    continue
                session.add(
                    ConsentPurpose(
                        code=default.code,
                        title=default.title,
                        summary=default.summary,
                        lawful_basis=default.lawful_basis,
                        categories=default.categories,
                        recipients=default.recipients,
                        jurisdiction=default.jurisdiction,
                        mode=default.mode,
                        purpose_of_use=default.purpose_of_use,
                    )
                )
                session.flush()
                now = self.clock()
                session.add(
                    NoticeVersion(
                        purpose_code=default.code,
                        version=1,
                        text=default.notice,
                        content_hash=notice_hash(default.notice),
                        effective_at=now,
                        published_at=now,
                        created_by="system:defaults",
                    )
                )
                added += 1
        return added

    def purposes(self, *, include_inactive: bool = False) -> list[ConsentPurpose]:
        query = select(ConsentPurpose).order_by(ConsentPurpose.title)
        if not include_inactive:
            query = query.where(ConsentPurpose.active.is_(True))
        with self.db.read() as session:
            return list(session.scalars(query))

    def purpose(self, code: str) -> ConsentPurpose:
        with self.db.read() as session:
            found = session.get(ConsentPurpose, code)
        if found is None:
            raise ConsentError("no such consent purpose")
        return found

    def current_notice(self, session: Session, code: str) -> NoticeVersion:
        notice = session.scalars(
            select(NoticeVersion)
            .where(
                NoticeVersion.purpose_code == code,
                NoticeVersion.published_at.is_not(None),
                NoticeVersion.effective_at <= self.clock(),
            )
            .order_by(NoticeVersion.version.desc())
            .limit(1)
        ).first()
        if notice is None:
            raise ConsentError("this purpose has no published notice yet")
        return notice

    def notice(self, code: str, version: int) -> NoticeVersion:
        with self.db.read() as session:
            found = session.scalars(
                select(NoticeVersion).where(
                    NoticeVersion.purpose_code == code,
                    NoticeVersion.version == version,
                    NoticeVersion.published_at.is_not(None),
                )
            ).first()
        if found is None:
            raise ConsentError("no such published notice")
        return found

    def notices(self, code: str) -> list[NoticeVersion]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(NoticeVersion).where(NoticeVersion.purpose_code == code).order_by(NoticeVersion.version)
                )
            )

    def create_purpose(
        self,
        *,
        code: str,
        title: str,
        summary: str,
        lawful_basis: str,
        categories: list[str],
        recipients: list[str],
        jurisdiction: str,
        mode: str,
        purpose_of_use: str,
        actor: str,
    ) -> None:
        from portal.records.categories import BY_CODE

        problems = []
        if not code.replace("-", "").isalnum() or not 2 <= len(code) <= 40 or code.lower() != code:
            problems.append("code: 2 to 40 lowercase letters, digits and dashes")
        if not title.strip() or len(title) > 120:
            problems.append("title: 1 to 120 characters")
        if not summary.strip():
            problems.append("summary: required")
        if not lawful_basis.strip():
            problems.append("lawful basis: required")
        if not categories or any(c not in BY_CODE for c in categories):
            problems.append("data categories: choose at least one known category")
        if mode not in ("opt-in", "opt-out"):
            problems.append("mode: opt-in or opt-out")
        if not purpose_of_use.isalpha():
            problems.append("purpose of use: an HL7 ActReason code such as HRESCH")
        if problems:
            raise ConsentError("; ".join(problems))

        def add() -> None:
            with self.db.write() as session:
                if session.get(ConsentPurpose, code) is not None:
                    raise ConsentError("a purpose with that code already exists")
                session.add(
                    ConsentPurpose(
                        code=code,
                        title=title.strip(),
                        summary=summary.strip(),
                        lawful_basis=lawful_basis.strip(),
                        categories=",".join(categories),
                        recipients="; ".join(r.strip() for r in recipients if r.strip()),
                        jurisdiction=jurisdiction.strip() or "EU/US",
                        mode=mode,
                        purpose_of_use=purpose_of_use.upper(),
                    )
                )
                self.ledger.append(
                    session, AuditEvent(action="consent.purpose_created", actor=actor, object=f"purpose:{code}")
                )

        retried_on_collision(add, PURPOSE_KEY)  # two admins at once: the second is told the code is taken

    def draft_notice(self, code: str, text: str, *, material: bool, actor: str) -> NoticeVersion:
        if not text.strip():
            raise ConsentError("the notice text is empty")
        # Two drafts at once: the second becomes the next version, as it would a moment later.
        return retried_on_collision(lambda: self._add_draft(code, text, material=material, actor=actor), NOTICE_KEY)

    def _add_draft(self, code: str, text: str, *, material: bool, actor: str) -> NoticeVersion:
        with self.db.write() as session:
            if session.get(ConsentPurpose, code) is None:
                raise ConsentError("no such consent purpose")
            latest = session.scalar(select(func.max(NoticeVersion.version)).where(NoticeVersion.purpose_code == code))
            draft = NoticeVersion(
                purpose_code=code,
                version=(latest or 0) + 1,
                text=text,
                content_hash=notice_hash(text),
                material=material,
                effective_at=self.clock(),
                created_by=actor,
            )
            session.add(draft)
        return draft

    def publish_notice(self, notice_id: str, *, actor: str) -> NoticeVersion:
        with self.db.write() as session:
            notice = session.get(NoticeVersion, notice_id, with_for_update=True)
            if notice is None:
                raise ConsentError("no such notice")
            if notice.published_at is not None:
                raise ConsentError("this notice is already published and can no longer change")
            now = self.clock()
            notice.published_at, notice.effective_at = now, now
            self._purpose_cache.clear()
            self.ledger.append(
                session,
                AuditEvent(
                    action="consent.notice_published",
                    actor=actor,
                    object=f"purpose:{notice.purpose_code}",
                    details={"version": notice.version, "material": notice.material, "sha256": notice.content_hash},
                ),
            )
        return notice

    def edit_draft(self, notice_id: str, text: str) -> None:
        """Drafts may change; a published notice never does (a new version is made instead)."""
        with self.db.write() as session:
            notice = session.get(NoticeVersion, notice_id, with_for_update=True)
            if notice is None:
                raise ConsentError("no such notice")
            if notice.published_at is not None:
                raise ConsentError("this notice is already published and can no longer change")
            notice.text, notice.content_hash = text, notice_hash(text)

    # ================================================================== a patient's choices

    def overview(self, patient_id: str) -> list[PurposeView]:
        with self.db.read() as session:
            decisions = {
                d.purpose_code: d
                for d in session.scalars(select(ConsentDecision).where(ConsentDecision.patient_id == patient_id))
            }
            seen = {
                n.id: n
                for n in session.scalars(
                    select(NoticeVersion).where(NoticeVersion.id.in_([d.notice_version_id for d in decisions.values()]))
                )
            }
            views = []
            for purpose in self.purposes():
                notice = self.current_notice(session, purpose.code)
                decision = decisions.get(purpose.code)
                views.append(
                    _view(
                        purpose,
                        notice,
                        decision,
                        seen.get(decision.notice_version_id) if decision else None,
                        self._material_since(session, purpose.code, seen, decision),
                    )
                )
            return views

    def _material_since(
        self, session: Session, code: str, seen: dict[str, NoticeVersion], decision: ConsentDecision | None
    ) -> bool:
        if decision is None:
            return False
        version = seen[decision.notice_version_id].version
        return bool(
            session.scalar(
                select(func.count())
                .select_from(NoticeVersion)
                .where(
                    NoticeVersion.purpose_code == code,
                    NoticeVersion.version > version,
                    NoticeVersion.material.is_(True),
                    NoticeVersion.published_at.is_not(None),
                )
            )
        )

    def change(
        self,
        patient_id: str,
        code: str,
        event: str,
        *,
        channel: str,
        actor: str,
        reason: str | None = None,
        evidence_ref: str | None = None,
    ) -> ConsentEvent:
        if event not in EVENTS:
            raise ConsentError("the change must be grant or withdraw")
        if channel not in CHANNELS:
            raise ConsentError("unknown channel")
        if channel == "staff":
            if not reason or len(reason.strip()) < 5:
                raise ConsentError("give the reason for recording this change (at least 5 characters)")
            if not evidence_ref or not evidence_ref.strip():
                raise ConsentError("give the reference of the scanned form")
        # Two first-ever changes race to create the decision row; once it exists, the second attempt locks
        # it like any later change.
        return retried_on_collision(
            lambda: self._change(
                patient_id, code, event, channel=channel, actor=actor, reason=reason, evidence_ref=evidence_ref
            ),
            DECISION_KEY,
        )

    def _change(
        self,
        patient_id: str,
        code: str,
        event: str,
        *,
        channel: str,
        actor: str,
        reason: str | None,
        evidence_ref: str | None,
    ) -> ConsentEvent:
        with self.db.write() as session:
            purpose = session.get(ConsentPurpose, code)
            if purpose is None or not purpose.active:
                raise ConsentError("no such consent purpose")
            decision = session.get(ConsentDecision, (patient_id, code), with_for_update=True)
            notice = self.current_notice(session, code)
            now = self.clock()
            event_id = new_id()
            facts = ReceiptFacts(
                receipt_id=event_id,
                principal=patient_id,
                controller=self.controller,
                controller_contact=self.contact,
                policy_url=self.policy_url(code, notice.version),
                purpose_code=code,
                purpose_title=purpose.title,
                purpose_summary=purpose.summary,
                lawful_basis=purpose.lawful_basis,
                categories=purpose.category_list,
                recipients=purpose.recipient_list,
                jurisdiction=purpose.jurisdiction,
                notice_version=notice.version,
                notice_hash=notice.content_hash,
                event=event,
                channel=channel,
                at=now,
            )
            document = sign_receipt(build_receipt(facts), self.keys.signing_key())
            seq = self.ledger.append(
                session,
                AuditEvent(
                    action=f"consent.{event}",
                    actor=actor,
                    subject=patient_id,
                    object=f"purpose:{code}",
                    details={"channel": channel, "notice_version": notice.version, "receipt": event_id},
                    payload=document["receipt"],
                ),
            )
            row = ConsentEvent(
                id=event_id,
                patient_id=patient_id,
                purpose_code=code,
                event=event,
                notice_version_id=notice.id,
                notice_hash=notice.content_hash,
                channel=channel,
                actor=actor,
                reason=reason.strip() if reason else None,
                evidence_ref=evidence_ref.strip() if evidence_ref else None,
                receipt=json.dumps(document),
                ledger_seq=seq,
                created_at=now,
            )
            session.add(row)
            if decision is None:
                session.add(
                    ConsentDecision(
                        patient_id=patient_id,
                        purpose_code=code,
                        state=EVENTS[event],
                        notice_version_id=notice.id,
                        revision=1,
                        updated_at=now,
                    )
                )
            else:
                decision.state, decision.notice_version_id = EVENTS[event], notice.id
                decision.revision += 1
                decision.updated_at = now
        return row

    def history(self, patient_id: str) -> list[tuple[ConsentEvent, ConsentPurpose, NoticeVersion]]:
        with self.db.read() as session:
            rows = session.execute(
                select(ConsentEvent, ConsentPurpose, NoticeVersion)
                .join(ConsentPurpose, ConsentPurpose.code == ConsentEvent.purpose_code)
                .join(NoticeVersion, NoticeVersion.id == ConsentEvent.notice_version_id)
                .where(ConsentEvent.patient_id == patient_id)
                .order_by(ConsentEvent.created_at.desc(), ConsentEvent.ledger_seq.desc())
            ).all()
        return [(event, purpose, notice) for event, purpose, notice in rows]

    def receipt(self, patient_id: str, receipt_id: str) -> dict[str, Any]:
        """A patient's own receipt; someone else's is indistinguishable from a missing one."""
        with self.db.read() as session:
            event = session.get(ConsentEvent, receipt_id)
        if event is None or event.patient_id != patient_id:
            raise ConsentError("no such receipt")
        document: dict[str, Any] = json.loads(event.receipt)
        return document

    def policy_url(self, code: str, version: int) -> str:
        return f"{self.origin}/consent/notices/{code}/{version}"

    def fhir_consent(self, patient_id: str, code: str) -> dict[str, Any]:
        purpose = self.purpose(code)
        with self.db.read() as session:
            decision = session.get(ConsentDecision, (patient_id, code))
            notice = (
                session.get(NoticeVersion, decision.notice_version_id)
                if decision
                else self.current_notice(session, code)
            )
            assert notice is not None
        granted = decision.state == "granted" if decision else purpose.mode == "opt-out"
        return consent_resource(
            consent_id=consent_id(patient_id, code),
            patient_id=patient_id,
            purpose=purpose,
            granted=granted,
            since=decision.updated_at if decision else None,
            policy_url=self.policy_url(code, notice.version),
            controller=self.controller,
            recorded=decision is not None,
        )

    # ================================================================== the decision API

    def decide(self, *, patient: str, purpose: str, recipient: str | None, actor: str) -> Decision:
        """Permit or deny one use for one patient; every check is recorded in the ledger.

        The hot path of other systems: purposes and their current notices come from a short-lived
        cache, the patient's choice from one query, and the audit entry is group-committed.
        """
        found, current = self._checked_question(patient, purpose, recipient, self._cached_purpose(purpose))
        with self.db.lone_read() as conn:
            row = conn.execute(_DECISION_FACTS, self._facts_params(patient, found)).first()
        patient_id, restricted, result = self._answer(found, current, row)
        if restricted and (categories := self._restricted_categories(patient_id, found)):
            result = _restricted(found, categories, result.consent_reference)
        self.ledger.record_grouped(_check_event(found, result, patient_id, actor, recipient))
        return result

    async def decide_async(self, *, patient: str, purpose: str, recipient: str | None, actor: str) -> Decision:
        """``decide`` for the API on the event loop: its read and its ledger commit hold no worker thread."""
        cached = self._purpose_cache.peek(purpose)
        if isinstance(cached, Missing):
            cached = await anyio.to_thread.run_sync(self._cached_purpose, purpose)
        found, current = self._checked_question(patient, purpose, recipient, cached)
        row = await self.hot.first(_DECISION_FACTS, self._facts_params(patient, found))
        patient_id, restricted, result = self._answer(found, current, row)
        if restricted and (
            categories := await anyio.to_thread.run_sync(self._restricted_categories, patient_id, found)
        ):
            result = _restricted(found, categories, result.consent_reference)
        await self.ledger.record_grouped_async(_check_event(found, result, patient_id, actor, recipient))
        return result

    def _cached_purpose(self, code: str) -> tuple[ConsentPurpose, NoticeVersion] | None:
        return self._purpose_cache.get(code, lambda: self._load_purpose(code))

    @staticmethod
    def _checked_question(
        patient: str, purpose: str, recipient: str | None, found: tuple[ConsentPurpose, NoticeVersion] | None
    ) -> tuple[ConsentPurpose, NoticeVersion]:
        """The purpose and its current notice, once the parameters are known to make sense."""
        if not patient.strip():
            raise DecisionInputError("patient", "the patient parameter is required")
        if not purpose.strip():
            raise DecisionInputError("purpose", "the purpose parameter is required")
        if found is None:
            raise DecisionInputError("purpose", f"unknown purpose {purpose!r}")
        if recipient is not None and recipient not in found[0].recipient_list:
            raise DecisionInputError("recipient", f"{recipient!r} is not a recipient named by this purpose")
        return found

    def _load_purpose(self, code: str) -> tuple[ConsentPurpose, NoticeVersion] | None:
        with self.db.read() as session:
            found = session.get(ConsentPurpose, code)
            if found is None or not found.active:
                return None
            return found, self.current_notice(session, code)

    def _facts_params(self, patient: str, purpose: ConsentPurpose) -> dict[str, str]:
        """Parameters of ``_DECISION_FACTS``: the patient's identifier ("system|value", or else an MRN) as its
        blind index, and the purpose."""
        system, sep, value = patient.rpartition("|")
        index = self.records.identifier_index(system, value) if sep else self.records.mrn_index(patient)
        return {"index": index, "purpose": purpose.code}

    @staticmethod
    def _answer(found: ConsentPurpose, current: NoticeVersion, row: Sequence[Any] | None) -> tuple[str, bool, Decision]:
        """(patient id, whether the patient has restricted categories to check, the answer from the choice)."""
        if row is None:
            raise DecisionInputError("patient", "no patient has that identifier")
        patient_id, state, seen_version, restrictions = row
        reference = consent_id(patient_id, found.code)
        return patient_id, bool(restrictions), _decision(found, state, seen_version, current, reference)

    def _restricted_categories(self, patient_id: str, purpose: ConsentPurpose) -> list[str]:
        with self.db.read() as session:
            return sorted(
                session.scalars(
                    select(CategoryRestriction.category).where(
                        CategoryRestriction.patient_id == patient_id,
                        CategoryRestriction.category.in_(purpose.category_list),
                    )
                )
            )

    # ================================================================== staff report

    def report(self) -> list[dict[str, Any]]:
        """Current choices per purpose and the notice version they were made under."""
        with self.db.read() as session:
            rows = session.execute(
                select(ConsentDecision.purpose_code, NoticeVersion.version, ConsentDecision.state, func.count())
                .join(NoticeVersion, NoticeVersion.id == ConsentDecision.notice_version_id)
                .group_by(ConsentDecision.purpose_code, NoticeVersion.version, ConsentDecision.state)
            ).all()
        counts: Counter[tuple[str, int, str]] = Counter({(code, version, state): n for code, version, state, n in rows})
        report = []
        for purpose in self.purposes(include_inactive=True):
            versions: list[int | None] = [*sorted({v for (c, v, _s) in counts if c == purpose.code})] or [None]
            for version in versions:
                report.append(
                    {
                        "purpose": purpose.code,
                        "title": purpose.title,
                        "mode": purpose.mode,
                        "notice_version": version,
                        "granted": counts.get((purpose.code, version, "granted"), 0) if version else 0,
                        "withdrawn": counts.get((purpose.code, version, "withdrawn"), 0) if version else 0,
                    }
                )
        return report


def _decision_facts_statement() -> Select[str, str | None, int | None, int]:
    # Built once: the decision API runs it on every call, and building it costs more than running it.
    # Whether the patient restricted any category at all: rare, so the purpose's categories are
    # compared in a second read only then, which keeps this statement free of list parameters.
    restrictions = (
        select(func.count())
        .select_from(CategoryRestriction)
        .where(CategoryRestriction.patient_id == PatientIdentifier.patient_id)
        .scalar_subquery()
    )
    return (
        select(PatientIdentifier.patient_id, ConsentDecision.state, NoticeVersion.version, restrictions)
        .outerjoin(
            ConsentDecision,
            and_(
                ConsentDecision.patient_id == PatientIdentifier.patient_id,
                ConsentDecision.purpose_code == bindparam("purpose"),
            ),
        )
        .outerjoin(NoticeVersion, NoticeVersion.id == ConsentDecision.notice_version_id)
        .where(PatientIdentifier.index == bindparam("index"))
    )


_DECISION_FACTS = _decision_facts_statement()


def _check_event(
    purpose: ConsentPurpose, result: Decision, patient_id: str, actor: str, recipient: str | None
) -> AuditEvent:
    return AuditEvent(
        action="consent.check",
        actor=actor,
        role="integration",
        subject=patient_id,
        object=f"purpose:{purpose.code}",
        purpose=purpose.purpose_of_use,
        details={"decision": result.decision, "recipient_given": recipient is not None},
    )


def consent_id(patient_id: str, code: str) -> str:
    return str(uuid.uuid5(CONSENT_NAMESPACE, f"{patient_id}/{code}"))


def _view(
    purpose: ConsentPurpose,
    notice: NoticeVersion,
    decision: ConsentDecision | None,
    seen: NoticeVersion | None,
    needs_review: bool,
) -> PurposeView:
    if decision is None:
        return PurposeView(purpose, notice, "default", purpose.mode == "opt-out", None, False, None)
    return PurposeView(
        purpose,
        notice,
        decision.state,
        decision.state == "granted",
        seen.version if seen else None,
        needs_review,
        decision.updated_at,
    )


def _restricted(purpose: ConsentPurpose, categories: list[str], consent: str) -> Decision:
    """After an erasure request, data kept only because the law requires it is used for nothing else."""
    return Decision(
        "deny",
        f"the patient asked for erasure; {', '.join(categories)} is kept only as the law requires "
        "and may not be used for this purpose (GDPR Art. 17(3), 18)",
        f"Consent/{consent}",
        purpose.code,
        None,
    )


def _decision(
    purpose: ConsentPurpose, state: str | None, version: int | None, current: NoticeVersion, consent: str
) -> Decision:
    """The answer from the patient's recorded choice (``state`` None: never chosen) and its notice version."""
    reference = f"Consent/{consent}"
    if state is None:
        if purpose.mode == "opt-out":
            return Decision("permit", "opt-out purpose: the patient has not objected", reference, purpose.code, None)
        return Decision("deny", "opt-in purpose: the patient has not consented", reference, purpose.code, None)
    later = f"; notice version {current.version} is newer and awaits the patient" if version != current.version else ""
    if state == "granted":
        return Decision(
            "permit", f"the patient consented under notice version {version}{later}", reference, purpose.code, version
        )
    return Decision(
        "deny", f"the patient withdrew consent under notice version {version}{later}", reference, purpose.code, version
    )
