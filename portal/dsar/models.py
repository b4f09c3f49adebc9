"""Data subject requests (export and erasure), their timeline, approvals, exports and certificates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class DataRequest(Base):
    """One request. Only ``RequestService`` changes it, through the transition table in ``lifecycle``.

    Nothing here is patient data in clear: free text (messages, reasons) lives encrypted in
    ``RequestEvent``; the scope and plan name categories and dates only.
    """

    __tablename__ = "data_requests"
    __table_args__ = (
        Index("ix_data_requests_status_due", "status", "due_at"),
        Index("ix_data_requests_patient", "patient_id", "submitted_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(10))  # export | erasure
    status: Mapped[str] = mapped_column(String(24))
    scope: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # categories, start, end
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stepup_evidence_id: Mapped[str | None] = mapped_column(ForeignKey("stepup_evidence.id"), nullable=True)
    # The statutory clocks: due dates move with pauses (waiting on the patient) and the one extension.
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the stricter of the two
    gdpr_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    hipaa_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    paused_seconds: Mapped[int] = mapped_column(Integer, default=0)
    extended: Mapped[bool] = mapped_column(Boolean, default=False)
    waiting_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # erasure cooling-off
    assignee: Mapped[str | None] = mapped_column(String(36), nullable=True)
    auto_approved: Mapped[bool] = mapped_column(Boolean, default=False)
    plan: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent, while processing
    progress_note: Mapped[str] = mapped_column(String(80), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RequestEvent(Base):
    """One step of a request's timeline; its text (a message or a reason) is encrypted."""

    __tablename__ = "data_request_events"
    __table_args__ = (Index("ix_data_request_events_request", "request_id", "at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("data_requests.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(60))  # patient:<id> | staff:<id> | system
    action: Mapped[str] = mapped_column(String(30))
    from_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_status: Mapped[str] = mapped_column(String(24))
    ledger_seq: Mapped[int] = mapped_column(Integer)
    key_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class RequestApproval(Base):
    """An officer's approval, tied to the step-up that confirmed it was them (four-eyes for erasure)."""

    __tablename__ = "data_request_approvals"
    __table_args__ = (UniqueConstraint("request_id", "officer_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("data_requests.id"), index=True)
    officer_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    stepup_evidence_id: Mapped[str] = mapped_column(ForeignKey("stepup_evidence.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExportArchive(Base):
    """A finished export ZIP, encrypted under the patient's key; purged after the download window."""

    __tablename__ = "export_archives"

    request_id: Mapped[str] = mapped_column(ForeignKey("data_requests.id"), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    key_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # None once purged
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> size, for the page
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    downloads: Mapped[int] = mapped_column(Integer, default=0)


class DeletionCertificate(Base):
    """The signed deletion certificate of an erasure (JSON document with its JWS); kept as evidence."""

    __tablename__ = "deletion_certificates"

    request_id: Mapped[str] = mapped_column(ForeignKey("data_requests.id"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Recipient(Base):
    """A downstream recipient told about erasures (GDPR Art. 19): an HIE, a registry, an insurer."""

    __tablename__ = "recipients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    contact: Mapped[str] = mapped_column(String(254))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class PolicySetting(Base):
    """An admin-set policy switch (e.g. auto-approve exports by verified patients)."""

    __tablename__ = "policy_settings"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[bool] = mapped_column(Boolean)
    updated_by: Mapped[str] = mapped_column(String(60))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
