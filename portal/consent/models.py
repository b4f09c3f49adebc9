"""Consent purposes, their versioned notices, each patient's current decision and its full history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class ConsentPurpose(Base):
    """A use of data beyond direct care that patients decide on."""

    __tablename__ = "consent_purposes"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    summary: Mapped[str] = mapped_column(Text)
    lawful_basis: Mapped[str] = mapped_column(String(200))
    categories: Mapped[str] = mapped_column(String(300))  # data category codes, comma-separated
    recipients: Mapped[str] = mapped_column(String(500))  # recipient names, "; "-separated
    jurisdiction: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(8))  # opt-in | opt-out
    purpose_of_use: Mapped[str] = mapped_column(String(20))  # HL7 v3 ActReason code
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def category_list(self) -> list[str]:
        return [c for c in self.categories.split(",") if c]

    @property
    def recipient_list(self) -> list[str]:
        return [r.strip() for r in self.recipients.split(";") if r.strip()]


class NoticeVersion(Base):
    """The text a patient saw. Once published it never changes (the service refuses edits)."""

    __tablename__ = "consent_notice_versions"
    __table_args__ = (UniqueConstraint("purpose_code", "version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    purpose_code: Mapped[str] = mapped_column(ForeignKey("consent_purposes.code"))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)  # Markdown
    content_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the UTF-8 text
    material: Mapped[bool] = mapped_column(Boolean, default=False)  # patients must confirm again
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentDecision(Base):
    """A patient's current choice for one purpose (the latest event); ``revision`` orders changes."""

    __tablename__ = "consent_decisions"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    purpose_code: Mapped[str] = mapped_column(ForeignKey("consent_purposes.code"), primary_key=True)
    state: Mapped[str] = mapped_column(String(12))  # granted | withdrawn
    notice_version_id: Mapped[str] = mapped_column(ForeignKey("consent_notice_versions.id"))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsentEvent(Base):
    """One change, with the notice seen, the channel, who acted and the signed receipt."""

    __tablename__ = "consent_events"
    __table_args__ = (Index("ix_consent_events_patient_created", "patient_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    purpose_code: Mapped[str] = mapped_column(ForeignKey("consent_purposes.code"))
    event: Mapped[str] = mapped_column(String(12))  # grant | withdraw
    notice_version_id: Mapped[str] = mapped_column(ForeignKey("consent_notice_versions.id"))
    notice_hash: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(12))  # portal | staff | api
    actor: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    evidence_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    receipt: Mapped[str] = mapped_column(Text)  # the signed receipt document (JSON)
    ledger_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
