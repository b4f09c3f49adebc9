"""Accesses to a patient's record: from the hospital's systems (FHIR AuditEvent) and from the portal itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class AccessEvent(Base):
    """One access. Who, role, organisation, department and free text are encrypted under the
    patient's access-log key; what stays in clear is only what filters and paging need."""

    __tablename__ = "access_events"
    __table_args__ = (Index("ix_access_events_patient_time", "patient_id", "occurred_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    # Blind index of (sender, event id): the same event sent twice is stored once.
    source_key: Mapped[str] = mapped_column(String(64), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(12))  # read | query | create | update | delete | disclose
    purpose: Mapped[str] = mapped_column(String(20))  # HL7 v3 ActReason code
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_kind: Mapped[str] = mapped_column(String(8))  # person | system
    origin: Mapped[str] = mapped_column(String(8))  # api | portal
    org_index: Mapped[str] = mapped_column(String(64), index=True)  # blind index of the organisation
    role_index: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
