"""Server-side sessions: random ids the server issued, stored hashed, with idle and absolute limits.

Only sign-in (and step-up) creates a session, so an id the client made up never matches a row:
it is refused and its cookie cleared. The id changes at sign-in and at step-up (``rotate``), so a
fixated id is worthless. The table stores SHA-256 of the id, so a database read does not hand
out live sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio.to_thread
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import Boolean, Index, Integer, Select, String, bindparam, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from portal.accounts.models import Account
from portal.db import Base, Database, UTCDateTime, utcnow
from portal.hot_reads import HotReads

COOKIE_NAME = "__Host-portal_session"
SubjectKind = Literal["patient", "staff"]
LAST_SEEN_GRANULARITY = timedelta(seconds=30)
USER_AGENT_LIMIT = 300


@dataclass(frozen=True)
class SessionPolicy:
    absolute: timedelta
    idle: timedelta


POLICIES: dict[str, SessionPolicy] = {
    "patient": SessionPolicy(absolute=timedelta(hours=12), idle=timedelta(minutes=30)),
    "staff": SessionPolicy(absolute=timedelta(hours=12), idle=timedelta(minutes=15)),
}


class WebSession(Base):
    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_subject", "subject_kind", "subject_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A short public handle for listing and revoking, unrelated to the secret id.
    handle: Mapped[str] = mapped_column(String(22), unique=True)
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(36))
    roles: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    idle_seconds: Mapped[int] = mapped_column(Integer)
    stepped_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Signed in with a recovery code: only adding a new passkey is allowed until that is done.
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    user_agent: Mapped[str] = mapped_column(String(USER_AGENT_LIMIT), default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def idle_deadline(self) -> datetime:
        return self.last_seen_at + timedelta(seconds=self.idle_seconds)

    def is_live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at and now < self.idle_deadline()

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r for r in self.roles.split(",") if r)


@dataclass(frozen=True)
class Principal:
    """Who is making the request, as far as authorization is concerned."""

    kind: str
    subject_id: str
    roles: frozenset[str]
    session_handle: str
    restricted: bool = False
    # The record a patient's account is linked to (fixed once linked), read with the session so
    # patient pages need no account look-up of their own.
    patient_id: str | None = None


def hash_session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class LoadedSession:
    session: WebSession
    patient_id: str | None

    def principal(self) -> Principal:
        found = self.session
        return Principal(
            found.subject_kind,
            found.subject_id,
            found.role_set,
            found.handle,
            restricted=found.restricted,
            patient_id=self.patient_id,
        )


class SessionService:
    """Owns every change to the web_sessions table."""

    def __init__(self, db: Database, hot: HotReads, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.hot = hot
        self.clock = clock

    def create(
        self,
        session: Session,
        *,
        kind: SubjectKind,
        subject_id: str,
        roles: frozenset[str] = frozenset(),
        user_agent: str = "",
        client_address: str = "",
        restricted: bool = False,
    ) -> str:
        """Start a session in the caller's transaction; returns the secret id for the cookie."""
        policy = POLICIES[kind]
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session.add(
            WebSession(
                id_hash=hash_session_id(token),
                handle=secrets.token_urlsafe(16),
                subject_kind=kind,
                subject_id=subject_id,
                roles=",".join(sorted(roles)),
                created_at=now,
                last_seen_at=now,
                expires_at=now + policy.absolute,
                idle_seconds=int(policy.idle.total_seconds()),
                user_agent=user_agent[:USER_AGENT_LIMIT],
                client_address=client_address[:64],
                restricted=restricted,
            )
        )
        return token

    def load(self, token: str, *, touch: bool = True) -> WebSession | None:
        """The live session for this id, touching its idle timer unless ``touch`` is False (a background
        poll is not the user being there); None for unknown or expired ids."""
        now = self.clock()
        id_hash = hash_session_id(token)
        with self.db.read() as session:
            found = session.get(WebSession, id_hash)
        if found is None or not found.is_live(now):
            return None
        if touch and now - found.last_seen_at >= LAST_SEEN_GRANULARITY:
            self._touch(found, now)
        return found

    async def load_with_patient(self, token: str, *, touch: bool = True) -> LoadedSession | None:
        """``load`` for every web request, on the event loop where the database allows it, with the
        record the signed-in account is linked to."""
        now = self.clock()
        row = await self.hot.first(_SESSION_WITH_PATIENT, {"id_hash": hash_session_id(token)})
        if row is None:
            return None
        found = WebSession(**{name: _utc(value) for name, value in zip(_SESSION_FIELDS, row[:-1], strict=True)})
        if not found.is_live(now):
            return None
        if touch and now - found.last_seen_at >= LAST_SEEN_GRANULARITY:
            # At most once per session every LAST_SEEN_GRANULARITY, so the worker thread is rare.
            await anyio.to_thread.run_sync(self._touch, found, now)
        return LoadedSession(found, row[-1])

    def _touch(self, found: WebSession, now: datetime) -> None:
        with self.db.write() as session:
            session.execute(update(WebSession).where(WebSession.id_hash == found.id_hash).values(last_seen_at=now))
        found.last_seen_at = now

    def rotate(self, session: Session, token: str, *, stepped_up: bool = False) -> str:
        """Replace a session's id (at sign-in and step-up), keeping its limits and owner."""
        old = session.get(WebSession, hash_session_id(token))
        if old is None or not old.is_live(self.clock()):
            raise LookupError("no live session to rotate")
        new_token = secrets.token_urlsafe(32)
        now = self.clock()
        session.add(
            WebSession(
                id_hash=hash_session_id(new_token),
                handle=secrets.token_urlsafe(16),
                subject_kind=old.subject_kind,
                subject_id=old.subject_id,
                roles=old.roles,
                created_at=old.created_at,
                last_seen_at=now,
                expires_at=old.expires_at,
                idle_seconds=old.idle_seconds,
                stepped_up_at=now if stepped_up else old.stepped_up_at,
                user_agent=old.user_agent,
                client_address=old.client_address,
                restricted=old.restricted,
            )
        )
        old.revoked_at = now
        old.revoked_reason = "rotated"
        return new_token

    def revoke(self, session: Session, *, subject_id: str, handle: str, reason: str) -> bool:
        result = session.execute(
            update(WebSession)
            .where(WebSession.subject_id == subject_id, WebSession.handle == handle, WebSession.revoked_at.is_(None))
            .values(revoked_at=self.clock(), revoked_reason=reason)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def revoke_all(self, session: Session, *, subject_id: str, reason: str, keep_handle: str | None = None) -> int:
        query = update(WebSession).where(WebSession.subject_id == subject_id, WebSession.revoked_at.is_(None))
        if keep_handle is not None:
            query = query.where(WebSession.handle != keep_handle)
        result = session.execute(query.values(revoked_at=self.clock(), revoked_reason=reason))
        return int(result.rowcount)  # type: ignore[attr-defined]

    def lift_restriction(self, session: Session, *, subject_id: str) -> None:
        session.execute(
            update(WebSession)
            .where(WebSession.subject_id == subject_id, WebSession.restricted.is_(True))
            .values(restricted=False)
        )

    def live_sessions(self, subject_id: str) -> list[WebSession]:
        now = self.clock()
        with self.db.read() as session:
            rows = session.scalars(
                select(WebSession)
                .where(WebSession.subject_id == subject_id, WebSession.revoked_at.is_(None))
                .order_by(WebSession.last_seen_at.desc())
            )
            return [row for row in rows if row.is_live(now)]


_SESSION_FIELDS = tuple(WebSession.__table__.c.keys())


def _session_with_patient_statement() -> Select[Any]:
    # Account ids are session subjects for patients and staff alike; only patients' link a record.
    return (
        select(*WebSession.__table__.c, Account.patient_id)
        .outerjoin(Account, Account.id == WebSession.subject_id)
        .where(WebSession.id_hash == bindparam("id_hash"))
    )


_SESSION_WITH_PATIENT = _session_with_patient_statement()


def _utc(value: object) -> object:
    """Times as the ORM gives them (UTC), whichever path read the row."""
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def session_cookie(token: str, *, max_age: int | None = None) -> Cookie:
    """The session cookie, with every flag pinned: __Host- prefix, Secure, HttpOnly, SameSite=Lax.

    Lax (not Strict) so that following a link from an e-mail lands signed in; every unsafe
    method is covered by the CSRF check anyway.
    """
    return Cookie(
        key=COOKIE_NAME,
        value=token,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
        max_age=max_age,
    )


def clear_session_cookie() -> Cookie:
    return session_cookie("", max_age=0)


PASSIVE_HEADER = b"x-portal-passive"


class SessionMiddleware:
    """Resolves the session cookie to a Principal in ``scope["user"]``; clears unknown ids."""

    def __init__(self, app: ASGIApp, sessions: SessionService) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        token = _cookie_value(scope, COOKIE_NAME)
        touch = not _is_passive(scope)
        loaded = await self.sessions.load_with_patient(token, touch=touch) if token else None
        if loaded is not None:
            scope["user"] = loaded.principal()
            scope["auth"] = loaded.session
        else:
            scope["user"] = None
            scope["auth"] = None
        if token and loaded is None:
            send = _clearing_cookie(send)
        await self.app(scope, receive, send)


def _is_passive(scope: Scope) -> bool:
    """A background poll (htmx ``hx-headers`` on the polling element) must not keep an idle session alive."""
    return any(key == PASSIVE_HEADER and value == b"1" for key, value in scope.get("headers", []))


def _cookie_value(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie_name, _, cookie_value = part.strip().partition("=")
                if cookie_name == name and cookie_value:
                    return cookie_value
    return None


def _clearing_cookie(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableScopeHeaders.from_message(message)
            headers.add("set-cookie", clear_session_cookie().to_header(header=""))
        await send(message)

    return wrapped
