"""Accounts of patients and staff, their passkeys, invitations, ceremonies and recovery codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class Account(Base):
    """A person who signs in. Patients link to their record; staff carry roles.

    Patients' contact details stay in their encrypted record; only staff e-mail is kept here.
    """

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))  # "patient" | "staff"
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), unique=True, nullable=True)
    email: Mapped[str | None] = mapped_column(String(254), unique=True, nullable=True)
    display_name: Mapped[str | None] = mapped_column(String(120), nullable=True)
    roles: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|active|disabled|locked
    user_handle: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    throttled_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    must_add_passkey: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(role for role in self.roles.split(",") if role)


class Credential(Base):
    """A registered passkey (WebAuthn public-key credential)."""

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(String(1400), primary_key=True)  # base64url credential id
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    aaguid: Mapped[str] = mapped_column(String(36), default="")
    device_type: Mapped[str] = mapped_column(String(16))  # single_device | multi_device (synced)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    transports: Mapped[str] = mapped_column(String(200), default="")
    name: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def synced(self) -> bool:
        return self.device_type == "multi_device"


class Invitation(Base):
    """A single-use enrolment link; only the SHA-256 of its token is stored."""

    __tablename__ = "invitations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(16), default="enrol")  # enrol | reenrol
    created_by: Mapped[str] = mapped_column(String(80))
    identity_check: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    wrong_answers: Mapped[int] = mapped_column(Integer, default=0)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Challenge(Base):
    """A WebAuthn challenge: server-side, single use, five-minute life."""

    __tablename__ = "webauthn_challenges"

    id: Mapped[str] = mapped_column(String(43), primary_key=True)
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    purpose: Mapped[str] = mapped_column(String(16))  # register | signin | stepup
    account_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    invitation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StepUpEvidence(Base):
    """The signed assertion of a step-up, kept as evidence of identity verification."""

    __tablename__ = "stepup_evidence"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400))
    ledger_seq: Mapped[int] = mapped_column(BigInteger)
    assertion: Mapped[str] = mapped_column(Text)  # the WebAuthn response JSON as received
    user_verified: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
