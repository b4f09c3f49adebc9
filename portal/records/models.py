"""The patient record store: patients, identifier look-ups and encrypted FHIR resources."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class Patient(Base):
    """A patient; the id is random and doubles as the pseudonymous id in the audit ledger."""

    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PatientIdentifier(Base):
    """A keyed blind index (HMAC) of one identifier: look-ups never store or compare plaintext."""

    __tablename__ = "patient_identifiers"

    index: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "mrn" or "identifier"


class Resource(Base):
    """One FHIR resource, its body encrypted under the patient's key for its category.

    The resource type and category stay in clear: they choose the key and drive retention.
    Clinical dates, codes and text are only inside the encrypted body.
    """

    __tablename__ = "resources"
    __table_args__ = (
        Index("ix_resources_patient_category", "patient_id", "category"),
        UniqueConstraint("patient_id", "source_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(40))
    resource_type: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    # Blind index of the sender's own id for the resource, so a re-import updates, not duplicates.
    source_key: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(40), default="import")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CategoryRestriction(Base):
    """A category kept under a legal obligation after an erasure: hidden from normal use until swept."""

    __tablename__ = "category_restrictions"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    category: Mapped[str] = mapped_column(String(40), primary_key=True)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    basis: Mapped[str] = mapped_column(String(300))
    request_id: Mapped[str] = mapped_column(String(36))  # the erasure request that set it
