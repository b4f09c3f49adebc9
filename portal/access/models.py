"""Accesses to a patient's record: from the hospital's systems (FHIR AuditEvent) and from the portal itself."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class AccessEvent(Base):
    """One access. Who, role, organisation, department and free text are encrypted under the
    patient's access-log key; what stays in clear is only what filters and paging need."""

    __tablename__ = "access_events"
    __table_args__ = (
        Index("ix_access_events_patient_time", "patient_id", "occurred_at"),
        # The weekly chart (GROUP BY organisation and week) and its total, read from the index alone, with
        # or without the filters on clear columns other than time and role (a period is found through
        # patient_time). Rows with equal keys share one entry (PostgreSQL deduplication), so time is left
        # out to keep it small. Also serves the organisation filter and the organisations' list.
        Index(
            "ix_access_events_chart",
            "patient_id",
            "org_index",
            "week",
            "emergency",
            "agent_kind",
            "action",
            "purpose",
        ),
        # "Emergency only", newest first, without sorting every emergency access of the patient.
        Index(
            "ix_access_events_emergency",
            "patient_id",
            "occurred_at",
            postgresql_where=text("emergency IS true"),
            sqlite_where=text("emergency IS true"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    # Blind index of (sender, event id): the same event sent twice is stored once.
    source_key: Mapped[str] = mapped_column(String(64), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The Monday (UTC) of occurred_at's ISO week, so the database can count accesses per week.
    week: Mapped[date] = mapped_column(Date)
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


class AccessLogVersion(Base):
    """How often a patient's accesses changed: what their cached access summary is valid for.

    Triggers on access_events keep it (migration 0012), so no writer can forget to. Derived data:
    backups leave it out, and a restore rebuilds it as the accesses are inserted again.
    """

    __tablename__ = "access_log_versions"
    __table_args__ = {"info": {"derived": True}}

    patient_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


def week_of(when: datetime) -> date:
    """The Monday of the ISO week (in UTC) that ``when`` falls in: what ``AccessEvent.week`` holds."""
    day = when.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


class AccessCase(Base):
    """A patient's question about one access, answered by the privacy office within 30 days."""

    __tablename__ = "access_cases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    access_event_id: Mapped[str] = mapped_column(ForeignKey("access_events.id"))
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | awaiting_patient | closed
    finding: Mapped[str | None] = mapped_column(String(20), nullable=True)  # justified | not_justified | referred
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    assignee: Mapped[str | None] = mapped_column(String(36), nullable=True)


class CaseMessage(Base):
    """One message in a case: the patient's question and replies, officers' questions and the explanation.
    The text is the patient's or about the patient, so it is encrypted under their access-log key."""

    __tablename__ = "access_case_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("access_cases.id"), index=True)
    author: Mapped[str] = mapped_column(String(60))  # patient:<id> | staff:<id>
    kind: Mapped[str] = mapped_column(String(20))  # question | reply | request | finding
    key_version: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertPreference(Base):
    __tablename__ = "access_alert_preferences"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    new_organisation: Mapped[bool] = mapped_column(Boolean, default=False)


class DisclosureAccounting(Base):
    """A request for an accounting of disclosures (HIPAA 45 CFR 164.528); the first in 12 months is free."""

    __tablename__ = "disclosure_accountings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    disclosures: Mapped[int] = mapped_column(Integer)
    free: Mapped[bool] = mapped_column(Boolean)
