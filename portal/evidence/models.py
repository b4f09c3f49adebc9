"""Regulator recipients, evidence packs and their shares, and the breach register."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id


class RegulatorRecipient(Base):
    """A supervisory authority that receives evidence, and the checkpoint it last received.

    The last checkpoint makes the regulator a witness: the next pack proves the ledger it shows
    is an extension of exactly that checkpoint, so a rewritten history cannot go unnoticed.
    """

    __tablename__ = "regulator_recipients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    authority: Mapped[str] = mapped_column(String(200))
    contact: Mapped[str] = mapped_column(String(254))
    case_reference: Mapped[str] = mapped_column(String(120))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), nullable=True, index=True)
    last_checkpoint_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_checkpoint_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EvidencePack(Base):
    """One pack: what it covers, for whom, and (once built) the signed ZIP itself.

    The ZIP holds pseudonymous ids, timestamps, decisions with their reasons and ledger proofs;
    patients' messages and clinical data are left out, which is why it is kept unencrypted.
    """

    __tablename__ = "evidence_packs"
    __table_args__ = (Index("ix_evidence_packs_requested", "requested_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    scope_kind: Mapped[str] = mapped_column(String(10))  # request | case | period
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"request": id} | {"case": id} | {"start", "end"}
    recipient_id: Mapped[str | None] = mapped_column(ForeignKey("regulator_recipients.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(10))  # queued | ready | failed
    requested_by: Mapped[str] = mapped_column(String(60))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    built_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> bytes
    checkpoint_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checkpoint_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class PackShare(Base):
    """A pack made visible to one regulator until ``expires_at``; downloads are counted and ledgered."""

    __tablename__ = "evidence_pack_shares"
    __table_args__ = (Index("ix_evidence_pack_shares_recipient", "recipient_id", "expires_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    pack_id: Mapped[str] = mapped_column(ForeignKey("evidence_packs.id"), index=True)
    recipient_id: Mapped[str] = mapped_column(ForeignKey("regulator_recipients.id"))
    shared_by: Mapped[str] = mapped_column(String(60))
    shared_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    downloads: Mapped[int] = mapped_column(Integer, default=0)


class Breach(Base):
    """A suspected or confirmed personal data breach; the clocks run from ``discovered_at``."""

    __tablename__ = "breaches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)  # what happened; staff are told to keep patient data out
    discovered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(60), nullable=True)  # e.g. staff:<id>, to narrow the window
    status: Mapped[str] = mapped_column(String(12))  # suspected | confirmed | not_a_breach | closed
    patient_notice: Mapped[str | None] = mapped_column(Text, nullable=True)  # shown to affected patients
    recorded_by: Mapped[str] = mapped_column(String(60))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BreachEvent(Base):
    """A decision or a notification sent, in order."""

    __tablename__ = "breach_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    breach_id: Mapped[str] = mapped_column(ForeignKey("breaches.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # decision | notification
    text: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(60))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class BreachSubject(Base):
    """A patient affected by a breach (found from the ledger); ``notified_at`` once told in the portal."""

    __tablename__ = "breach_subjects"

    breach_id: Mapped[str] = mapped_column(ForeignKey("breaches.id"), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True, index=True)
    entries: Mapped[int] = mapped_column(Integer)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
