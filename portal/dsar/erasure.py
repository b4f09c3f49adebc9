"""Erasure: where each category's data lives, what must be kept and until when, and the erasing.

Every place that holds a patient's data is a ``Source`` listed under its category in ``SOURCES``.
Erasing a category destroys its data key (so every copy, backups included, is unreadable),
records it in the erasure ledger beside the keys, and deletes the rows; verifying re-queries
every source. Re-applying the erasure ledger after restoring an old backup uses the same list.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from portal.access.models import AccessCase, AccessEvent, AlertPreference, CaseMessage, DisclosureAccounting
from portal.audit.ledger import AuditEvent, Ledger
from portal.consent.models import ConsentDecision, ConsentEvent
from portal.db import Base, Database, utcnow
from portal.dsar.models import DataRequest, RequestEvent
from portal.records.categories import BY_CODE, CATEGORIES, Category
from portal.records.models import CategoryRestriction, PatientIdentifier, Resource
from portal.records.service import RecordStore
from portal.security.keystore import KeyStore


class Step(enum.StrEnum):
    erase = "erase"
    retain = "retain"
    nothing = "nothing"  # nothing held in this category


@dataclass(frozen=True)
class Source:
    """One place a category's data is held for a patient."""

    label: str
    model: type[Base]
    where: Callable[[str, str], ColumnElement[bool]]  # (patient_id, category) -> the patient's rows
    clear_column: str | None = None  # erase by clearing this column instead of deleting the row

    def count(self, session: Session, patient_id: str, category: str) -> int:
        query = select(func.count()).select_from(self.model).where(self.where(patient_id, category))
        if self.clear_column is not None:
            query = query.where(getattr(self.model, self.clear_column).is_not(None))
        return int(session.scalar(query) or 0)

    def erase(self, session: Session, patient_id: str, category: str) -> int:
        condition = self.where(patient_id, category)
        if self.clear_column is not None:
            column = getattr(self.model, self.clear_column)
            statement: Any = update(self.model).where(condition, column.is_not(None)).values({column: None})
        else:
            statement = delete(self.model).where(condition)
        result = session.execute(statement.execution_options(synchronize_session=False))
        return int(result.rowcount)  # type: ignore[attr-defined]


def _resources(patient_id: str, category: str) -> ColumnElement[bool]:
    return (Resource.patient_id == patient_id) & (Resource.category == category)


def _patient_cases(patient_id: str) -> Any:
    return select(AccessCase.id).where(AccessCase.patient_id == patient_id)


def _patient_requests(patient_id: str) -> Any:
    return select(DataRequest.id).where(DataRequest.patient_id == patient_id)


RESOURCES = Source("FHIR resources", Resource, _resources)
# Delete order matters (foreign keys): messages before cases before the accesses they question.
SOURCES: dict[str, tuple[Source, ...]] = {
    "demographics": (
        RESOURCES,
        Source("identifier look-ups", PatientIdentifier, lambda p, _c: PatientIdentifier.patient_id == p),
    ),
    "access_log": (
        Source(
            "questions about accesses (messages)", CaseMessage, lambda p, _c: CaseMessage.case_id.in_(_patient_cases(p))
        ),
        Source("questions about accesses", AccessCase, lambda p, _c: AccessCase.patient_id == p),
        Source("access events", AccessEvent, lambda p, _c: AccessEvent.patient_id == p),
        Source("accountings of disclosures", DisclosureAccounting, lambda p, _c: DisclosureAccounting.patient_id == p),
    ),
    "consent": (
        Source("consent changes and receipts", ConsentEvent, lambda p, _c: ConsentEvent.patient_id == p),
        Source("current consent choices", ConsentDecision, lambda p, _c: ConsentDecision.patient_id == p),
    ),
    "preferences": (Source("alert settings", AlertPreference, lambda p, _c: AlertPreference.patient_id == p),),
    "requests": (
        Source(
            "request messages",
            RequestEvent,
            lambda p, _c: RequestEvent.request_id.in_(_patient_requests(p)),
            clear_column="text",
        ),
    ),
}


def sources_of(category: str) -> tuple[Source, ...]:
    found = SOURCES.get(category, ())
    if BY_CODE[category].resource_types or category == "wellness":
        return found if RESOURCES in found else (RESOURCES, *found)
    return found


@dataclass(frozen=True)
class PlanItem:
    category: str
    title: str
    held: int
    step: Step
    basis: str
    retain_until: date | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["step"] = self.step.value
        data["retain_until"] = self.retain_until.isoformat() if self.retain_until else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanItem:
        until = data.get("retain_until")
        return cls(
            category=data["category"],
            title=data["title"],
            held=int(data["held"]),
            step=Step(data["step"]),
            basis=data["basis"],
            retain_until=date.fromisoformat(until) if until else None,
        )


ERASE_BASIS = "Erased on your request (GDPR Art. 17(1)); no law requires us to keep it"
EXPIRED_BASIS = "Erased: the period the law required us to keep it has ended"


class Eraser:
    def __init__(
        self,
        *,
        db: Database,
        keys: KeyStore,
        ledger: Ledger,
        records: RecordStore,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.keys = keys
        self.ledger = ledger
        self.records = records
        self.clock = clock

    # ------------------------------------------------------------------ what is held

    def inventory(self, patient_id: str) -> dict[str, dict[str, int]]:
        """For each category, how many rows each source holds for the patient (nothing is decrypted)."""
        with self.db.read() as session:
            return {
                category.code: {
                    source.label: source.count(session, patient_id, category.code)
                    for source in sources_of(category.code)
                }
                for category in CATEGORIES
            }

    def plan(self, patient_id: str) -> list[PlanItem]:
        """Per category: erase, or keep with the legal basis and the date it may be erased."""
        held = {code: sum(counts.values()) for code, counts in self.inventory(patient_id).items()}
        anchors = self._anchors(patient_id)
        today = self.clock().date()
        items = []
        for category in CATEGORIES:
            items.append(self._plan_item(category, held[category.code], anchors.get(category.code), today))
        return items

    def _plan_item(self, category: Category, held: int, anchor: date | None, today: date) -> PlanItem:
        if held == 0:
            return PlanItem(category.code, category.title, 0, Step.nothing, "Nothing is held in this category", None)
        retention = category.retention
        if retention is None:
            return PlanItem(category.code, category.title, held, Step.erase, ERASE_BASIS, None)
        until = _add_years(anchor or today, retention.years)
        if until <= today:
            return PlanItem(category.code, category.title, held, Step.erase, EXPIRED_BASIS, None)
        return PlanItem(category.code, category.title, held, Step.retain, retention.basis, until)

    def _anchors(self, patient_id: str) -> dict[str, date]:
        """The date each retention period counts from (last treatment, last consent change, last access)."""
        last_treatment = self._last_treatment(patient_id)
        with self.db.read() as session:
            last_consent = session.scalar(
                select(func.max(ConsentEvent.created_at)).where(ConsentEvent.patient_id == patient_id)
            )
            last_access = session.scalar(
                select(func.max(AccessEvent.occurred_at)).where(AccessEvent.patient_id == patient_id)
            )
        today = self.clock().date()
        medical = last_treatment or today
        anchors = dict.fromkeys(("demographics", "clinical", "medications", "documents"), medical)
        anchors["billing"] = date(medical.year, 12, 31)
        anchors["consent"] = last_consent.date() if last_consent else today
        anchors["access_log"] = last_access.date() if last_access else today
        anchors["requests"] = today
        return anchors

    def _last_treatment(self, patient_id: str) -> date | None:
        encounters = self.records.read(
            patient_id,
            actor="system:erasure",
            role="system",
            purpose="PATRQT",
            resource_types=["Encounter"],
            include_restricted=True,
        )
        dates = [found for stored in encounters if stored.resource and (found := _encounter_date(stored.resource))]
        return max(dates) if dates else None

    # ------------------------------------------------------------------ erasing

    def erase_category(
        self,
        patient_id: str,
        category: str,
        *,
        request_id: str,
        actor: str,
        on_erased: Callable[[Session, dict[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Destroy the category's key (recorded in the erasure ledger), then delete its rows. Idempotent.

        ``on_erased`` gets the rows deleted now, in the deleting transaction: a pass resumed after a
        crash finds nothing left, so only a record kept with the deletion says what was erased.
        """
        destroyed = self.keys.destroy(patient_id, category, reason=f"erasure {request_id}"[:80], request_id=request_id)
        with self.db.write() as session:
            counts = self._delete_rows(session, patient_id, category)
            if on_erased is not None:
                on_erased(session, counts)
            session.execute(
                delete(CategoryRestriction).where(
                    CategoryRestriction.patient_id == patient_id, CategoryRestriction.category == category
                )
            )
            self.ledger.append(
                session,
                AuditEvent(
                    action="dsar.category_erased",
                    actor=actor,
                    role="system",
                    subject=patient_id,
                    object=f"request:{request_id}",
                    details={"category": category, "keys_destroyed": destroyed, "rows": sum(counts.values())},
                ),
            )
        return counts

    def _delete_rows(self, session: Session, patient_id: str, category: str) -> dict[str, int]:
        return {source.label: source.erase(session, patient_id, category) for source in sources_of(category)}

    def restrict(self, patient_id: str, item: PlanItem, *, request_id: str) -> None:
        assert item.retain_until is not None
        until = datetime.combine(item.retain_until, datetime.min.time(), tzinfo=UTC)
        with self.db.write() as session:
            row = session.get(CategoryRestriction, (patient_id, item.category))
            if row is None:
                session.add(
                    CategoryRestriction(
                        patient_id=patient_id,
                        category=item.category,
                        retain_until=until,
                        basis=item.basis[:300],
                        request_id=request_id,
                    )
                )
            else:
                row.retain_until, row.basis, row.request_id = until, item.basis[:300], request_id

    def verify(self, patient_id: str, categories: list[str]) -> list[dict[str, Any]]:
        """Re-query every source of each erased category: nothing readable may remain."""
        live = self.keys.categories_with_keys(patient_id)
        checks: list[dict[str, Any]] = []
        with self.db.read() as session:
            for category in categories:
                checks.append({"category": category, "source": "data key", "remaining": int(live.get(category, False))})
                for source in sources_of(category):
                    remaining = source.count(session, patient_id, category)
                    checks.append({"category": category, "source": source.label, "remaining": remaining})
        for check in checks:
            check["ok"] = check["remaining"] == 0
        return checks

    # ------------------------------------------------------------------ sweeps and restores

    def due_restrictions(self) -> list[CategoryRestriction]:
        with self.db.read() as session:
            return list(
                session.scalars(select(CategoryRestriction).where(CategoryRestriction.retain_until <= self.clock()))
            )

    def reapply_ledger(self, since: datetime | None = None) -> int:
        """After restoring a backup: delete again every row of every category erased (since ``since``)."""
        total = 0
        with self.db.write() as session:
            for record in self.keys.erasures(since):
                total += sum(self._delete_rows(session, record.patient_id, record.category).values())
                session.execute(
                    delete(CategoryRestriction).where(
                        CategoryRestriction.patient_id == record.patient_id,
                        CategoryRestriction.category == record.category,
                    )
                )
        return total


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _encounter_date(encounter: dict[str, Any]) -> date | None:
    period = encounter.get("period") or {}
    value = period.get("end") or period.get("start")
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None
