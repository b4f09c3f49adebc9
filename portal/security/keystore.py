"""The key store: wrapped data keys and system keys, in a database of their own.

It is a separate database from the main one (a second SQLite file, or its own PostgreSQL
database and credentials), so a backup or dump of the main database never holds a usable key.
Every key here is wrapped by the key-encryption key (KEK), which lives outside both databases.

Data keys are per patient and per data category. Destroying one (erasure) leaves a tombstone,
so later reads say "erased" instead of failing, and every ciphertext under it, including copies
in old backups, is unreadable for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Integer, LargeBinary, MetaData, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from portal.db import NAMING_CONVENTION, Database, UTCDateTime, utcnow
from portal.security.crypto import (
    FieldContext,
    KekProvider,
    KekRing,
    decrypt_field,
    encrypt_field,
    generate_data_key,
    generate_signing_key,
    open_signing_key,
    seal_signing_key,
)

CACHE_SECONDS = 60.0
SIGNING_KEY = "signing-ed25519"
BLIND_INDEX_KEY = "blind-index"


class KeyBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DataKey(KeyBase):
    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("patient_id", "category", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(36), index=True)
    category: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    destroyed_reason: Mapped[str | None] = mapped_column(String(80), nullable=True)


class SystemKey(KeyBase):
    """Keys of the portal itself (signing key, blind-index key), sealed under the KEK."""

    __tablename__ = "system_keys"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(32))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ErasureRecord(KeyBase):
    """The erasure ledger: each category erased, kept beside the keys and outside the main database,
    so restoring an old backup of the main database can re-apply every erasure made since."""

    __tablename__ = "erasures"
    __table_args__ = (UniqueConstraint("patient_id", "category", "request_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(36), index=True)
    category: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(36))
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KeyDestroyedError(LookupError):
    """The data key was destroyed by an erasure: the data it protected is gone for good."""


@dataclass(frozen=True)
class ActiveKey:
    version: int
    dek: bytes


class KeyStore:
    """Owns every change to the key store; hands out unwrapped data keys with a short cache."""

    def __init__(self, db: Database, kek: KekProvider, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self._kek = kek
        self._ring = kek.load()
        self._ring_loaded = time.monotonic()
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, ActiveKey]] = {}
        self._lock = threading.Lock()

    @property
    def ring(self) -> KekRing:
        """The KEK ring, re-read now and then so a rotation reaches every process without a restart."""
        if time.monotonic() - self._ring_loaded > CACHE_SECONDS:
            self._ring = self._kek.load()
            self._ring_loaded = time.monotonic()
        return self._ring

    def _unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        if kek_id not in self.ring.ids:
            # Another process rotated the KEK moments ago: pick up the new ring now.
            self._ring, self._ring_loaded = self._kek.load(), time.monotonic()
        return self._ring.unwrap(kek_id, wrapped)

    # ----------------------------------------------------------------- data keys

    def data_key(self, patient_id: str, category: str, *, create: bool = False) -> ActiveKey:
        """The current data key of a patient's category; raises KeyDestroyedError after erasure."""
        cached = self._cached(patient_id, category)
        if cached is not None:
            return cached
        with self.db.read() as session:
            row = session.scalars(
                select(DataKey)
                .where(DataKey.patient_id == patient_id, DataKey.category == category)
                .order_by(DataKey.version.desc())
                .limit(1)
            ).first()
        if row is None:
            if not create:
                raise LookupError(f"no data key for category {category}")
            return self._create(patient_id, category, version=1)
        if row.wrapped is None or row.kek_id is None:
            if create:
                # A category erased earlier gets a fresh key for new data; the old stays destroyed.
                return self._create(patient_id, category, version=row.version + 1)
            raise KeyDestroyedError(category)
        key = ActiveKey(row.version, self._unwrap(row.kek_id, row.wrapped))
        self._remember(patient_id, category, key)
        return key

    def key_version(self, patient_id: str, category: str, version: int) -> bytes:
        """A specific version's key (older rows may have been written under an earlier one)."""
        cached = self._cached(patient_id, category)
        if cached is not None and cached.version == version:
            return cached.dek
        with self.db.read() as session:
            row = session.scalars(
                select(DataKey).where(
                    DataKey.patient_id == patient_id, DataKey.category == category, DataKey.version == version
                )
            ).first()
        if row is None or row.wrapped is None or row.kek_id is None:
            raise KeyDestroyedError(category)
        dek = self._unwrap(row.kek_id, row.wrapped)
        newest = self._newest_version(patient_id, category)
        if newest == version:
            # Reads of the current key are the common case; cache it like data_key() does.
            self._remember(patient_id, category, ActiveKey(version, dek))
        return dek

    def holds(self, patient_id: str, category: str, version: int) -> bool:
        """Whether ``key_version`` would answer from memory, without a read."""
        cached = self._cached(patient_id, category)
        return cached is not None and cached.version == version

    def _newest_version(self, patient_id: str, category: str) -> int | None:
        with self.db.read() as session:
            return session.scalar(
                select(func.max(DataKey.version)).where(DataKey.patient_id == patient_id, DataKey.category == category)
            )

    def destroy(self, patient_id: str, category: str, *, reason: str, request_id: str | None = None) -> int:
        """Destroy every version of a patient's category key; returns how many were destroyed.

        With ``request_id`` the erasure ledger records it in the same transaction (once per request).
        """
        now = self._clock()
        with self.db.write() as session:
            if request_id is not None and not session.scalar(
                select(func.count())
                .select_from(ErasureRecord)
                .where(
                    ErasureRecord.patient_id == patient_id,
                    ErasureRecord.category == category,
                    ErasureRecord.request_id == request_id,
                )
            ):
                session.add(
                    ErasureRecord(patient_id=patient_id, category=category, request_id=request_id, erased_at=now)
                )
            rows = session.scalars(
                select(DataKey).where(
                    DataKey.patient_id == patient_id, DataKey.category == category, DataKey.wrapped.is_not(None)
                )
            ).all()
            for row in rows:
                row.wrapped = None
                row.kek_id = None
                row.destroyed_at = now
                row.destroyed_reason = reason[:80]
        with self._lock:
            self._cache.pop((patient_id, category), None)
        return len(rows)

    def erasures(self, since: datetime | None = None) -> list[ErasureRecord]:
        """The erasure ledger, oldest first (all of it, or what was erased after ``since``)."""
        query = select(ErasureRecord).order_by(ErasureRecord.id)
        if since is not None:
            query = query.where(ErasureRecord.erased_at >= since)
        with self.db.read() as session:
            return list(session.scalars(query))

    def categories_with_keys(self, patient_id: str) -> dict[str, bool]:
        """Each category the patient has a key for, and whether it is still live."""
        with self.db.read() as session:
            rows = session.execute(
                select(DataKey.category, func.count(DataKey.wrapped))
                .where(DataKey.patient_id == patient_id)
                .group_by(DataKey.category)
            ).all()
        return {category: live > 0 for category, live in rows}

    # ----------------------------------------------------------------- KEK rotation

    def rewrap_all(self, ring: KekRing, batch: int = 500) -> int:
        """Re-wrap every live key under ``ring``'s current KEK (the old KEK must still be in it)."""
        self._ring = ring
        count = 0
        for ids in self._batches_not_under(ring.current_id, batch):
            with self.db.write() as session:
                for row in session.scalars(select(DataKey).where(DataKey.id.in_(ids))):
                    if row.wrapped is None or row.kek_id is None:
                        continue
                    dek = ring.unwrap(row.kek_id, row.wrapped)
                    row.kek_id, row.wrapped = ring.wrap(dek)
                    count += 1
        with self.db.write() as session:
            for system in session.scalars(select(SystemKey).where(SystemKey.kek_id != ring.current_id)):
                system.sealed = _reseal(system, ring.get(system.kek_id), ring.current_key)
                system.kek_id = ring.current_id
        with self._lock:
            self._cache.clear()
        return count

    def rotate_kek(self) -> tuple[str, int]:
        """Make a new KEK current and re-wrap every key under it; old KEKs stay until retired.

        Other processes pick the new ring up within a minute; keys they wrap meanwhile under the
        old KEK are caught by ``retire_kek``, which re-wraps again before removing anything.
        """
        ring = self._kek.rotate()
        self._ring, self._ring_loaded = ring, time.monotonic()
        return ring.current_id, self.rewrap_all(ring)

    def retire_kek(self, kek_id: str) -> int:
        """Remove an old KEK once nothing is wrapped under it any more; returns keys re-wrapped first."""
        ring = self._kek.load()
        if kek_id == ring.current_id:
            raise ValueError("the current key-encryption key cannot be retired; rotate first")
        count = self.rewrap_all(ring)
        with self.db.read() as session:
            left = session.scalar(select(func.count()).select_from(DataKey).where(DataKey.kek_id == kek_id))
            left = (left or 0) + (
                session.scalar(select(func.count()).select_from(SystemKey).where(SystemKey.kek_id == kek_id)) or 0
            )
        if left:
            raise RuntimeError(f"{left} keys are still wrapped under {kek_id}; not retired")
        self._ring, self._ring_loaded = self._kek.retire(kek_id), time.monotonic()
        return count

    def _batches_not_under(self, kek_id: str, batch: int) -> Iterator[list[int]]:
        last = 0
        while True:
            with self.db.read() as session:
                ids = list(
                    session.scalars(
                        select(DataKey.id)
                        .where(DataKey.id > last, DataKey.kek_id.is_not(None), DataKey.kek_id != kek_id)
                        .order_by(DataKey.id)
                        .limit(batch)
                    )
                )
            if not ids:
                return
            last = ids[-1]
            yield ids

    # ----------------------------------------------------------------- system keys

    def signing_key(self, name: str = SIGNING_KEY) -> Ed25519PrivateKey:
        """An Ed25519 key of the portal: by default the one for checkpoints, receipts, manifests and
        certificates; other names (e.g. API tokens) get keys of their own, so no key serves two purposes."""
        row = self._system_key(name)
        if row is None:
            key = generate_signing_key()
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            row = self._store_system_key(name, seal_signing_key(self.ring.current_key, key), public)
        return open_signing_key(self.ring.get(row.kek_id), row.sealed)

    def blind_index_key(self) -> bytes:
        """The HMAC key of identifier look-ups (MRN and others)."""
        row = self._system_key(BLIND_INDEX_KEY)
        if row is None:
            sealed = encrypt_field(self.ring.current_key, generate_data_key(), _system_context(BLIND_INDEX_KEY))
            row = self._store_system_key(BLIND_INDEX_KEY, sealed, None)
        return decrypt_field(self.ring.get(row.kek_id), row.sealed, _system_context(BLIND_INDEX_KEY))

    def _system_key(self, name: str) -> SystemKey | None:
        with self.db.read() as session:
            return session.get(SystemKey, name)

    def _store_system_key(self, name: str, sealed: bytes, public: bytes | None) -> SystemKey:
        # Two processes may race to create the same key; the first insert wins and both use it.
        try:
            with self.db.write() as session:
                session.add(SystemKey(name=name, kek_id=self.ring.current_id, sealed=sealed, public=public))
        except IntegrityError:
            pass
        row = self._system_key(name)
        assert row is not None
        return row

    # ----------------------------------------------------------------- internals

    def _create(self, patient_id: str, category: str, *, version: int) -> ActiveKey:
        dek = generate_data_key()
        kek_id, wrapped = self.ring.wrap(dek)
        try:
            with self.db.write() as session:
                session.add(
                    DataKey(
                        patient_id=patient_id,
                        category=category,
                        version=version,
                        kek_id=kek_id,
                        wrapped=wrapped,
                        created_at=self._clock(),
                    )
                )
        except IntegrityError:
            # Another process created it first: use theirs.
            return self.data_key(patient_id, category)
        key = ActiveKey(version, dek)
        self._remember(patient_id, category, key)
        return key

    def _cached(self, patient_id: str, category: str) -> ActiveKey | None:
        with self._lock:
            entry = self._cache.get((patient_id, category))
        if entry is None or time.monotonic() - entry[0] > CACHE_SECONDS:
            return None
        return entry[1]

    def _remember(self, patient_id: str, category: str, key: ActiveKey) -> None:
        with self._lock:
            self._cache[(patient_id, category)] = (time.monotonic(), key)


_SYSTEM_CONTEXT_PATIENT = "portal-system"


def _system_context(name: str) -> FieldContext:
    return FieldContext(
        patient_id=_SYSTEM_CONTEXT_PATIENT, table="system_keys", column="sealed", row_id=name, key_version=1
    )


def _reseal(row: SystemKey, old_kek: bytes, new_kek: bytes) -> bytes:
    if row.public is not None:  # an Ed25519 signing key
        return seal_signing_key(new_kek, open_signing_key(old_kek, row.sealed))
    context = _system_context(row.name)
    return encrypt_field(new_kek, decrypt_field(old_kek, row.sealed, context), context)
