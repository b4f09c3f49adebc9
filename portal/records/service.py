"""The record store service: import FHIR bundles, look patients up, and read their records.

Every read of patient data goes through ``RecordStore.read``, which appends an access entry to
the audit ledger before any ciphertext is opened: no caller can forget to log.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, new_id, retried_on_collision, unique_key
from portal.records.categories import BY_RESOURCE_TYPE, category_for
from portal.records.models import CategoryRestriction, Patient, PatientIdentifier, Resource
from portal.security.crypto import FieldContext, blind_index, decrypt_field, encrypt_field
from portal.security.keystore import KeyDestroyedError, KeyStore

MRN_TYPE_CODE = "MR"
IDENTIFIER_KEY = unique_key(cast(Table, PatientIdentifier.__table__), "index")
RESOURCE_SOURCE_KEY = unique_key(cast(Table, Resource.__table__), "patient_id", "source_key")


class ReadObserver(Protocol):
    def __call__(
        self,
        session: Session,
        *,
        patient_id: str,
        actor: str,
        role: str | None,
        purpose: str,
        categories: Iterable[str] | None,
    ) -> None: ...


SUPPORTED_BUNDLE_TYPES = ("collection", "transaction", "batch", "searchset")
MAX_PROBLEMS = 200


@dataclass(frozen=True)
class ImportProblem:
    index: int | None  # entry index in the bundle, None for the bundle itself
    field: str
    reason: str

    def __str__(self) -> str:
        where = "bundle" if self.index is None else f"entry[{self.index}]"
        return f"{where} {self.field}: {self.reason}"


class BundleRejectedError(ValueError):
    """The bundle was refused as a whole; nothing was stored."""

    def __init__(self, problems: Sequence[ImportProblem]) -> None:
        self.problems = list(problems)
        super().__init__(f"bundle rejected: {len(self.problems)} problem(s); first: {self.problems[0]}")


@dataclass(frozen=True)
class ImportResult:
    patient_id: str
    created_patient: bool
    counts: dict[str, int]
    updated: int


@dataclass(frozen=True)
class StoredResource:
    id: str
    resource_type: str
    category: str
    resource: dict[str, Any] | None  # None when the category was erased (its key is destroyed)

    @property
    def erased(self) -> bool:
        return self.resource is None


@dataclass
class _Entry:
    index: int
    resource: dict[str, Any]
    resource_type: str
    category: str
    full_url: str | None
    source_ref: str
    row_id: str = ""


@dataclass
class _Validated:
    entries: list[_Entry]
    patient: _Entry
    problems: list[ImportProblem] = field(default_factory=list)


class RecordStore:
    def __init__(self, db: Database, keys: KeyStore, ledger: Ledger, mrn_system: str) -> None:
        self.db = db
        self.keys = keys
        self.ledger = ledger
        self.mrn_system = mrn_system
        self._index_key: bytes | None = None
        self._read_observers: list[ReadObserver] = []

    def on_read(self, observer: ReadObserver) -> None:
        """Run ``observer`` in the transaction that logs each read (the access history uses it)."""
        self._read_observers.append(observer)

    # ------------------------------------------------------------------ identifiers

    def blind(self, namespace: str, value: str) -> str:
        """A keyed blind index (HMAC) of a value, for look-ups that never compare plaintext."""
        if self._index_key is None:
            self._index_key = self.keys.blind_index_key()
        return blind_index(self._index_key, namespace, value)

    def mrn_index(self, mrn: str) -> str:
        return self.blind("mrn", mrn)

    def identifier_index(self, system: str, value: str) -> str:
        return self.blind("identifier", f"{system}|{value}")

    def find_by_mrn(self, mrn: str) -> str | None:
        """The patient id for an MRN, found through its blind index."""
        with self.db.read() as session:
            row = session.get(PatientIdentifier, self.mrn_index(mrn))
            return row.patient_id if row else None

    def find_by_identifier(self, system: str, value: str) -> str | None:
        with self.db.read() as session:
            row = session.get(PatientIdentifier, self.identifier_index(system, value))
            return row.patient_id if row else None

    # ------------------------------------------------------------------ import

    def import_bundle(
        self, bundle: Mapping[str, Any], *, actor: str, role: str | None = None, source: str = "import"
    ) -> ImportResult:
        """Store a FHIR Bundle for one patient, all or nothing; raises BundleRejectedError."""
        validated = _validate_bundle(bundle)
        indexes = self._patient_indexes(validated.patient.resource)
        if not indexes:
            raise BundleRejectedError(
                [
                    ImportProblem(
                        validated.patient.index, "identifier", "the Patient needs at least one identifier (e.g. an MRN)"
                    )
                ]
            )
        # Two imports for one new patient, or of one resource, at once: the second finds what the first stored.
        return retried_on_collision(
            lambda: self._store_bundle(validated, indexes, actor=actor, role=role, source=source),
            IDENTIFIER_KEY,
            RESOURCE_SOURCE_KEY,
        )

    def _store_bundle(
        self, validated: _Validated, indexes: dict[str, str], *, actor: str, role: str | None, source: str
    ) -> ImportResult:
        with self.db.write() as session:
            patient_id, created = self._find_or_create_patient(session, indexes, validated.patient.index)
            keys = {c: self.keys.data_key(patient_id, c, create=True) for c in {e.category for e in validated.entries}}
            updated = self._assign_rows(session, patient_id, validated.entries)
            references = _reference_map(validated.entries)
            existing = {
                row.id: row
                for row in session.scalars(
                    select(Resource).where(Resource.id.in_([e.row_id for e in validated.entries]))
                )
            }
            for entry in validated.entries:
                body = _rewrite_references(entry.resource, references)
                body["id"] = entry.row_id
                key = keys[entry.category]
                blob = encrypt_field(key.dek, _dump(body), _context(patient_id, entry.row_id, key.version))
                row = existing.get(entry.row_id)
                if row is None:
                    session.add(
                        Resource(
                            id=entry.row_id,
                            patient_id=patient_id,
                            category=entry.category,
                            resource_type=entry.resource_type,
                            key_version=key.version,
                            body=blob,
                            source_key=self.blind("resource-source", entry.source_ref),
                            source=source,
                        )
                    )
                else:
                    row.body, row.key_version = blob, key.version
            counts = dict(Counter(e.resource_type for e in validated.entries))
            self.ledger.append(
                session,
                AuditEvent(
                    action="records.import",
                    actor=actor,
                    role=role,
                    subject=patient_id,
                    object=f"patient:{patient_id}",
                    purpose="HOPERAT",
                    details={"resources": len(validated.entries), "updated": updated, "created_patient": created},
                    payload=counts,
                ),
            )
        return ImportResult(patient_id=patient_id, created_patient=created, counts=counts, updated=updated)

    def _patient_indexes(self, patient: Mapping[str, Any]) -> dict[str, str]:
        indexes: dict[str, str] = {}
        for identifier in patient.get("identifier", []):
            system, value = identifier.get("system"), identifier.get("value")
            if not value:
                continue
            if system:
                indexes[self.identifier_index(system, value)] = "identifier"
            if system == self.mrn_system or _is_mrn_type(identifier):
                indexes[self.mrn_index(value)] = "mrn"
        return indexes

    def _find_or_create_patient(
        self, session: Session, indexes: Mapping[str, str], patient_index: int
    ) -> tuple[str, bool]:
        found = {
            row.patient_id
            for row in session.scalars(select(PatientIdentifier).where(PatientIdentifier.index.in_(list(indexes))))
        }
        if len(found) > 1:
            raise BundleRejectedError(
                [ImportProblem(patient_index, "identifier", "the identifiers belong to different patients")]
            )
        if found:
            patient_id = found.pop()
            created = False
        else:
            patient_id = new_id()
            session.add(Patient(id=patient_id))
            session.flush()
            created = True
        known = set(session.scalars(select(PatientIdentifier.index).where(PatientIdentifier.patient_id == patient_id)))
        for index, kind in indexes.items():
            if index not in known:
                session.add(PatientIdentifier(index=index, patient_id=patient_id, kind=kind))
        return patient_id, created

    def _assign_rows(self, session: Session, patient_id: str, entries: list[_Entry]) -> int:
        """Give each entry its row id: the existing row for a resource sent before, else a new one."""
        by_source = {self.blind("resource-source", e.source_ref): e for e in entries}
        existing: dict[str, str] = dict(
            session.execute(
                select(Resource.source_key, Resource.id).where(
                    Resource.patient_id == patient_id, Resource.source_key.in_(list(by_source))
                )
            ).all()
        )
        for source_key, entry in by_source.items():
            entry.row_id = existing.get(source_key) or new_id()
        return len(existing)

    # ------------------------------------------------------------------ reading

    def read(
        self,
        patient_id: str,
        *,
        actor: str,
        purpose: str,
        role: str | None = None,
        categories: Iterable[str] | None = None,
        resource_types: Iterable[str] | None = None,
        include_restricted: bool = False,
    ) -> list[StoredResource]:
        """Decrypt a patient's resources; the access is in the ledger before any data is opened.

        Categories kept only under a legal obligation after an erasure request are left out unless
        ``include_restricted`` (the patient's own export, a legal hold) asks for them.
        """
        wanted = sorted(set(categories)) if categories is not None else None
        types = sorted(set(resource_types)) if resource_types is not None else None
        with self.db.write() as session:
            self.ledger.append(
                session,
                AuditEvent(
                    action="records.read",
                    actor=actor,
                    role=role,
                    subject=patient_id,
                    object=f"patient:{patient_id}",
                    purpose=purpose,
                    details={
                        "categories": ",".join(wanted) if wanted else "all",
                        "types": ",".join(types) if types else "all",
                        "restricted": include_restricted,
                    },
                ),
            )
            for observer in self._read_observers:
                observer(session, patient_id=patient_id, actor=actor, role=role, purpose=purpose, categories=wanted)
        query = select(
            Resource.id, Resource.resource_type, Resource.category, Resource.key_version, Resource.body
        ).where(Resource.patient_id == patient_id)
        if wanted is not None:
            query = query.where(Resource.category.in_(wanted))
        if types is not None:
            query = query.where(Resource.resource_type.in_(types))
        if not include_restricted:
            restricted = select(CategoryRestriction.category).where(CategoryRestriction.patient_id == patient_id)
            query = query.where(Resource.category.not_in(restricted))
        with self.db.read() as session:
            rows = session.execute(query.order_by(Resource.resource_type, Resource.id)).all()
        return list(self._open(patient_id, rows))

    def _open(self, patient_id: str, rows: Sequence[Any]) -> Iterator[StoredResource]:
        keys: dict[tuple[str, int], bytes | None] = {}
        for row_id, resource_type, category, version, body in rows:
            if (category, version) not in keys:
                try:
                    keys[(category, version)] = self.keys.key_version(patient_id, category, version)
                except KeyDestroyedError:
                    keys[(category, version)] = None
            dek = keys[(category, version)]
            if dek is None:
                yield StoredResource(row_id, resource_type, category, None)
                continue
            plaintext = decrypt_field(dek, body, _context(patient_id, row_id, version))
            yield StoredResource(row_id, resource_type, category, json.loads(plaintext))

    def patient_resource(
        self, patient_id: str, *, actor: str, purpose: str, role: str | None = None
    ) -> dict[str, Any] | None:
        # Contacting and identifying the patient stays allowed under a restriction (GDPR Art. 18(3)).
        found = self.read(
            patient_id, actor=actor, purpose=purpose, role=role, resource_types=["Patient"], include_restricted=True
        )
        return found[0].resource if found else None

    def restrictions(self, patient_id: str) -> list[CategoryRestriction]:
        with self.db.read() as session:
            return list(
                session.scalars(select(CategoryRestriction).where(CategoryRestriction.patient_id == patient_id))
            )

    def counts(self, patient_id: str) -> dict[str, int]:
        """How many resources of each category are held (no patient data is opened)."""
        with self.db.read() as session:
            rows = session.execute(
                select(Resource.category, func.count())
                .where(Resource.patient_id == patient_id)
                .group_by(Resource.category)
            ).all()
        return {str(category): int(count) for category, count in rows}


def _context(patient_id: str, row_id: str, version: int) -> FieldContext:
    return FieldContext(patient_id=patient_id, table="resources", column="body", row_id=row_id, key_version=version)


def _dump(resource: Mapping[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


def _is_mrn_type(identifier: Mapping[str, Any]) -> bool:
    codings = identifier.get("type", {}).get("coding", [])
    return any(coding.get("code") == MRN_TYPE_CODE for coding in codings)


# ---------------------------------------------------------------------- validation


def _validate_bundle(bundle: Mapping[str, Any]) -> _Validated:
    problems: list[ImportProblem] = []
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise BundleRejectedError([ImportProblem(None, "resourceType", "the file is not a FHIR Bundle")])
    if bundle.get("type") not in SUPPORTED_BUNDLE_TYPES:
        problems.append(ImportProblem(None, "type", f"must be one of {', '.join(SUPPORTED_BUNDLE_TYPES)}"))
    raw_entries = bundle.get("entry")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise BundleRejectedError([*problems, ImportProblem(None, "entry", "the bundle has no entries")])
    entries = [entry for index, raw in enumerate(raw_entries) if (entry := _validate_entry(index, raw, problems))]
    full_urls = {e.full_url for e in entries if e.full_url}
    for entry in entries:
        for reference in _references(entry.resource):
            if reference.startswith("urn:uuid:") and reference not in full_urls:
                problems.append(ImportProblem(entry.index, "reference", f"{reference} is not in the bundle"))
    patients = [e for e in entries if e.resource_type == "Patient"]
    if len(patients) != 1 and not any(p.index is not None and p.field == "resourceType" for p in problems):
        problems.append(ImportProblem(None, "entry", f"the bundle must hold exactly one Patient, not {len(patients)}"))
    if problems:
        raise BundleRejectedError(problems[:MAX_PROBLEMS])
    return _Validated(entries=entries, patient=patients[0])


def _validate_entry(index: int, raw: Any, problems: list[ImportProblem]) -> _Entry | None:
    resource = raw.get("resource") if isinstance(raw, Mapping) else None
    if not isinstance(resource, dict):
        problems.append(ImportProblem(index, "resource", "missing"))
        return None
    resource_type = resource.get("resourceType")
    category = category_for(resource_type) if isinstance(resource_type, str) else None
    if category is None or not isinstance(resource_type, str):
        supported = ", ".join(sorted(BY_RESOURCE_TYPE))
        problems.append(
            ImportProblem(index, "resourceType", f"{resource_type!r} is not stored here (supported: {supported})")
        )
        return None
    try:
        get_fhir_model_class(resource_type).model_validate(resource)
    except pydantic.ValidationError as exc:
        for error in exc.errors()[:10]:
            where = ".".join(str(part) for part in error["loc"]) or "(resource)"
            problems.append(ImportProblem(index, where, error["msg"]))
        return None
    full_url = raw.get("fullUrl")
    source_ref = f"{resource_type}/{resource['id']}" if resource.get("id") else (full_url or "")
    if not source_ref:
        problems.append(ImportProblem(index, "id", "each resource needs an id or a fullUrl"))
        return None
    return _Entry(index, resource, resource_type, category, full_url, source_ref)


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _reference_map(entries: Iterable[_Entry]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for entry in entries:
        local = f"{entry.resource_type}/{entry.row_id}"
        if entry.full_url:
            mapping[entry.full_url] = local
        if entry.resource.get("id"):
            mapping[f"{entry.resource_type}/{entry.resource['id']}"] = local
    return mapping


def _rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of ``node`` whose references point at the stored rows instead of the sender's ids."""
    if isinstance(node, dict):
        return {
            key: mapping.get(value, value)
            if key == "reference" and isinstance(value, str)
            else _rewrite_references(value, mapping)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_references(item, mapping) for item in node]
    return node
