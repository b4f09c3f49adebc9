"""Integration clients (machine accounts of /api/v1) and their rotating refresh tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class IntegrationClient(Base):
    """A system (the EHR, a lab) registered by a privacy admin; it authenticates with a secret."""

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(80))
    # Space-separated, as in the OAuth2 "scope" parameter.
    scopes: Mapped[str] = mapped_column(String(200))
    # Argon2id PHC string; the secret itself is shown once and never stored.
    secret_hash: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class RefreshToken(Base):
    """One refresh token; each use replaces it with a new one in the same family.

    A family is everything descended from one client-credentials grant: presenting a token that
    was already used means two parties hold it, so the whole family is revoked.
    """

    __tablename__ = "api_refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    # SHA-256 of a 256-bit random token: a database read does not hand out usable tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The scope of the original grant; a refresh may narrow it, never widen it (RFC 6749 §6).
    scope: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
