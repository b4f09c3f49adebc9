"""Integration clients and their OAuth2 tokens: every state change of the machine API lives here.

A privacy admin registers a client (name, scopes) and sees its secret once; only an Argon2id
hash is kept. The client trades its credentials for a short access JWT (EdDSA, ≤ 10 minutes)
and a refresh token. Refresh tokens rotate on every use; presenting one that was already used
means two parties hold it, so its whole family is revoked (OAuth 2.0 Security BCP §4.14).
Revoking a client takes effect on its next call: each access token is checked against the
client's row, one primary-key read (the token's signature is checked once, its expiry every time).
On the web the read runs on the event loop (``HotReads``), as the consent decision's does.

Token times (iat, nbf, exp) are stamped from the injected clock; PyJWT checks them against
the system clock, so tests move the service clock to mint tokens in the past or the future.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, NoReturn

import anyio.to_thread
import jwt
import structlog
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from portal.api.client_status import ClientStatus, ClientStatuses
from portal.api.models import IntegrationClient, RefreshToken
from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, new_id, utcnow
from portal.hot_reads import HotReads
from portal.records.service import MRN_TYPE_CODE, BundleRejectedError, ImportProblem, ImportResult, RecordStore
from portal.security.keystore import KeyStore
from portal.security.ratelimit import Limit, LocalRateLimiter, RateLimiter
from portal.security.secrets import SECRET_HASHER
from portal.security.sessions import Principal

log = structlog.get_logger("portal.api")

SCOPES: dict[str, str] = {
    "records:write": "Send patient records (FHIR Bundle)",
    "access-events:write": "Send access events (FHIR AuditEvent)",
    "consent:read": "Ask whether a use of a patient's data is consented",
}
ACCESS_TOKEN_LIFETIME = timedelta(minutes=10)
# From the client-credentials grant, for the whole family: the client authenticates again after.
REFRESH_TOKEN_LIFETIME = timedelta(hours=24)
CLOCK_LEEWAY_SECONDS = 30
JWT_ALGORITHM = "EdDSA"
# RFC 9068: a distinct type, so no other JWT signed by this portal passes as an access token.
JWT_TYPE = "at+jwt"
SIGNING_KEY_NAME = "api-jwt"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "scope", "iat", "nbf", "exp", "jti"]
VERIFIED_TOKENS_KEPT = 10_000
NAME_MAX = 80
SECRET_MAX = 256


@dataclass(frozen=True)
class ApiRateLimits:
    """Requests allowed per window: on the token endpoint per client and per address, on the API per client."""

    token_per_client: int = 30
    token_per_address: int = 120
    api_per_client: int = 60_000  # per process: capacity protection, not a guessing limit
    window_seconds: int = 60


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: the code and a description that is safe to send to the client."""

    def __init__(self, error: str, description: str, status_code: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code


class InvalidAccessTokenError(Exception):
    """The bearer token cannot be used; ``reason`` is for the logs, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientFormError(ValueError):
    """The registration form has problems: field name → message for the admin."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = dict(errors)


class ClientAlreadyRevokedError(ValueError):
    pass


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str
    scope: str


def actor_of(client_id: str) -> str:
    return f"integration:{client_id}"


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _is_client_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class IntegrationService:
    def __init__(
        self,
        *,
        db: Database,
        keys: KeyStore,
        ledger: Ledger,
        records: RecordStore,
        limiter: RateLimiter,
        origin: str,
        clock: Callable[[], datetime] = utcnow,
        limits: ApiRateLimits | None = None,
        hot: HotReads | None = None,
    ) -> None:
        self.db = db
        self.hot = hot or HotReads(db)
        self.client_statuses = ClientStatuses(self.hot)
        self.keys = keys
        self.ledger = ledger
        self.records = records
        self.limiter = limiter
        self.issuer = origin
        self.audience = f"{origin}/api/v1"
        self.clock = clock
        self.limits = limits or ApiRateLimits()
        self.api_limiter = LocalRateLimiter()
        self.system_clock: Callable[[], float] = time.time
        self._claims: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ clients (privacy admin)

    def create_client(self, name: str, scopes: Collection[str], actor: str) -> tuple[IntegrationClient, str]:
        """Register a client; returns it with its secret, which is shown once and never stored."""
        name = " ".join(name.split())
        wanted = sorted(set(scopes))
        with self.db.write() as session:
            self._check_registration(session, name, wanted)
            secret = secrets.token_urlsafe(32)
            client = IntegrationClient(
                id=new_id(),
                name=name,
                scopes=" ".join(wanted),
                secret_hash=SECRET_HASHER.hash(secret),
                created_by=actor,
                created_at=self.clock(),
            )
            session.add(client)
            self.ledger.append(
                session,
                AuditEvent(
                    action="api.client.created",
                    actor=actor,
                    role="privacy_admin",
                    object=f"api-client:{client.id}",
                    details={"name": name, "scopes": client.scopes},
                ),
            )
        return client, secret

    def _check_registration(self, session: Session, name: str, scopes: list[str]) -> None:
        errors: dict[str, str] = {}
        if not name:
            errors["name"] = "Enter a name for the system, for example “Main EHR”."
        elif len(name) > NAME_MAX:
            errors["name"] = f"Use at most {NAME_MAX} characters for the name."
        elif any(unicodedata.category(ch).startswith("C") for ch in name):
            errors["name"] = "The name contains characters that cannot be displayed."
        elif any(other.casefold() == name.casefold() for other in self._active_names(session)):
            errors["name"] = "An active client already has this name. Choose another name."
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if not scopes:
            errors["scopes"] = "Choose at least one permission."
        elif unknown:
            errors["scopes"] = f"Unknown permission: {', '.join(unknown)}."
        if errors:
            raise ClientFormError(errors)

    def _active_names(self, session: Session) -> list[str]:
        return list(session.scalars(select(IntegrationClient.name).where(IntegrationClient.revoked_at.is_(None))))

    def list_clients(self) -> list[IntegrationClient]:
        with self.db.read() as session:
            return list(session.scalars(select(IntegrationClient).order_by(IntegrationClient.created_at.desc())))

    def revoke_client(self, client_id: str, actor: str) -> IntegrationClient:
        """Revoke a client and every refresh token it holds; its access tokens fail on their next use."""
        now = self.clock()
        with self.db.write() as session:
            known = _is_client_id(client_id)
            client = session.get(IntegrationClient, client_id, with_for_update=True) if known else None
            if client is None:
                raise LookupError("no such client")
            if not client.is_active:
                raise ClientAlreadyRevokedError(f"{client.name} was already revoked")
            client.revoked_at = now
            revoked = self._revoke_tokens(session, RefreshToken.client_id == client.id, now)
            self.ledger.append(
                session,
                AuditEvent(
                    action="api.client.revoked",
                    actor=actor,
                    role="privacy_admin",
                    object=f"api-client:{client.id}",
                    details={"refresh_tokens_revoked": revoked},
                ),
            )
        self.client_statuses.forget(client.id)
        return client

    # ------------------------------------------------------------------ tokens (RFC 6749)

    def issue_tokens(
        self, client_id: str, client_secret: str, requested_scopes: Collection[str] | None = None
    ) -> IssuedTokens:
        """Client credentials grant (§4.4): an access token and the first refresh token of a new family."""
        client = self._authenticate(client_id, client_secret)
        scope = _grant_scope(client.scope_set, requested_scopes)
        with self.db.write() as session:
            self._rehash_if_needed(session, client, client_secret)
            expires_at = self.clock() + REFRESH_TOKEN_LIFETIME
            return self._issue(
                session, client.id, scope, family_id=new_id(), expires_at=expires_at, grant="client_credentials"
            )

    def refresh(
        self,
        refresh_token: str,
        *,
        client_id: str,
        client_secret: str,
        requested_scopes: Collection[str] | None = None,
    ) -> IssuedTokens:
        """Refresh grant (§6): the client authenticates too; the token is replaced by a new one.

        A token that was already used revokes its whole family, and the reuse is in the ledger.
        """
        client = self._authenticate(client_id, client_secret)
        now = self.clock()
        with self.db.write() as session:
            row = self._refresh_row(session, refresh_token)
            if row is None or row.client_id != client.id:
                refusal = "unknown"
            elif row.used_at is not None:
                refusal = "reused"
                self._revoke_tokens(session, RefreshToken.family_id == row.family_id, now)
            elif row.revoked_at is not None:
                refusal = "revoked"
            elif row.expires_at <= now:
                refusal = "expired"
            else:
                scope = _grant_scope(frozenset(row.scope.split()) & client.scope_set, requested_scopes)
                row.used_at = now
                # The replacement keeps the family's expiry: rotation never extends a grant (ASVS 10.4.8).
                return self._issue(
                    session, client.id, scope, family_id=row.family_id, expires_at=row.expires_at, grant="refresh_token"
                )
            self.ledger.append(
                session,
                AuditEvent(
                    action="api.token.reuse_detected" if refusal == "reused" else "api.token.refresh_refused",
                    actor=actor_of(client.id),
                    role="integration",
                    object=f"token-family:{row.family_id}" if row is not None else None,
                    outcome="failure",
                    details={"reason": refusal},
                ),
            )
        log.warning("api.refresh_refused", client=client.id, reason=refusal)
        raise OAuthError("invalid_grant", "the refresh token is invalid, expired, revoked or was already used")

    def revoke_token(
        self, token: str, *, client_id: str, client_secret: str, token_type_hint: str | None = None
    ) -> None:
        """RFC 7009: a client revokes one of its refresh tokens, and with it the family it belongs to.

        Unknown tokens are not an error (§2.2). Access tokens are not revocable one by one: they
        expire within minutes, and revoking the client stops them at once.
        """
        client = self._authenticate(client_id, client_secret)
        if token_type_hint == "access_token" or token.count(".") == 2:  # noqa: S105 - a token type name
            raise OAuthError(
                "unsupported_token_type",
                "access tokens cannot be revoked one by one; revoke the refresh token instead",
            )
        now = self.clock()
        with self.db.write() as session:
            row = self._refresh_row(session, token)
            if row is None:
                return
            if row.client_id != client.id:
                raise OAuthError("invalid_grant", "the token was not issued to this client")
            revoked = self._revoke_tokens(session, RefreshToken.family_id == row.family_id, now)
            self.ledger.append(
                session,
                AuditEvent(
                    action="api.token.revoked",
                    actor=actor_of(client.id),
                    role="integration",
                    object=f"token-family:{row.family_id}",
                    details={"refresh_tokens_revoked": revoked},
                ),
            )

    def _issue(
        self, session: Session, client_id: str, scope: str, *, family_id: str, expires_at: datetime, grant: str
    ) -> IssuedTokens:
        now = self.clock()
        refresh_token = secrets.token_urlsafe(32)
        session.add(
            RefreshToken(
                id=new_id(),
                client_id=client_id,
                family_id=family_id,
                token_hash=hash_refresh_token(refresh_token),
                scope=scope,
                created_at=now,
                expires_at=expires_at,
            )
        )
        jti = secrets.token_urlsafe(16)
        access_token = jwt.encode(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "sub": client_id,
                "scope": scope,
                "iat": now,
                "nbf": now,
                "exp": now + ACCESS_TOKEN_LIFETIME,
                "jti": jti,
            },
            self._signing_key,
            algorithm=JWT_ALGORITHM,
            headers={"typ": JWT_TYPE},
        )
        self.ledger.append(
            session,
            AuditEvent(
                action="api.token.issued",
                actor=actor_of(client_id),
                role="integration",
                object=f"token-family:{family_id}",
                details={"grant": grant, "scope": scope, "jti": jti},
            ),
        )
        return IssuedTokens(
            access_token=access_token,
            expires_in=int(ACCESS_TOKEN_LIFETIME.total_seconds()),
            refresh_token=refresh_token,
            scope=scope,
        )

    def _refresh_row(self, session: Session, token: str) -> RefreshToken | None:
        return session.scalars(
            select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token)).with_for_update()
        ).one_or_none()

    def _revoke_tokens(self, session: Session, which: ColumnElement[bool], now: datetime) -> int:
        result = session.execute(
            update(RefreshToken).where(which, RefreshToken.revoked_at.is_(None)).values(revoked_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ client authentication

    def _authenticate(self, client_id: str, client_secret: str) -> IntegrationClient:
        """The client whose secret this is, or invalid_client (and an entry in the ledger)."""
        client = self._client(client_id) if _is_client_id(client_id) else None
        # Unknown clients are checked against a dummy hash, so timing does not reveal which ids exist.
        stored = client.secret_hash if client is not None else self._dummy_hash
        matches = len(client_secret) <= SECRET_MAX and _verify_secret(stored, client_secret)
        if client is not None and client.is_active and matches:
            return client
        reason = "unknown_client" if client is None else "wrong_secret" if not matches else "revoked"
        self.ledger.record(
            AuditEvent(
                action="api.client.authentication_failed",
                actor=actor_of(client.id if client is not None else "unknown"),
                role="integration",
                object=f"api-client:{client.id}" if client is not None else None,
                outcome="failure",
                details={"reason": reason},
            )
        )
        log.warning("api.client_authentication_failed", reason=reason)
        raise OAuthError("invalid_client", "client authentication failed", status_code=401)

    def _client(self, client_id: str) -> IntegrationClient | None:
        with self.db.read() as session:
            return session.get(IntegrationClient, client_id)

    def _rehash_if_needed(self, session: Session, client: IntegrationClient, secret: str) -> None:
        if SECRET_HASHER.check_needs_rehash(client.secret_hash):
            session.execute(
                update(IntegrationClient)
                .where(IntegrationClient.id == client.id)
                .values(secret_hash=SECRET_HASHER.hash(secret))
            )

    @cached_property
    def _dummy_hash(self) -> str:
        return SECRET_HASHER.hash(secrets.token_urlsafe(32))

    # ------------------------------------------------------------------ access tokens (bearer)

    @cached_property
    def _signing_key(self) -> Ed25519PrivateKey:
        return self.keys.signing_key(SIGNING_KEY_NAME)

    @cached_property
    def _verifying_key(self) -> Ed25519PublicKey:
        return self._signing_key.public_key()

    async def verify_access_token_async(self, token: str) -> Principal:
        """The integration principal of a valid access token; raises InvalidAccessTokenError.

        Each call with a genuine token counts against its client's rate limit (TooManyRequestsError).
        On the app's event loop the client's status is read without a worker thread (and, on PostgreSQL, kept;
        see ``portal.api.client_status``).
        """
        claims = self._verified_claims(token)
        client_id = self._client_id(claims)
        status = None if client_id is None else await self.client_statuses.status(client_id)
        principal = self._admitted(claims, status)
        if principal is None:
            await anyio.to_thread.run_sync(self._refuse_revoked, str(claims["sub"]))
        return principal

    @staticmethod
    def _client_id(claims: Mapping[str, Any]) -> str | None:
        client_id = str(claims["sub"])
        return client_id if _is_client_id(client_id) else None

    def _admitted(self, claims: Mapping[str, Any], status: ClientStatus | None) -> Principal | None:
        """The principal, from the client's current status (so a revocation applies at once); None when the
        client is revoked."""
        if status is None:
            raise InvalidAccessTokenError("unknown client")
        # Refused calls count too, so a revoked client that keeps retrying cannot flood the ledger.
        self.api_limiter.check(self.api_limits(str(claims["sub"])))
        active, scopes = status
        return _principal(claims, frozenset(scopes.split())) if active else None

    def _refuse_revoked(self, client_id: str) -> NoReturn:
        self.ledger.record(
            AuditEvent(
                action="api.token.refused",
                actor=actor_of(client_id),
                role="integration",
                object=f"api-client:{client_id}",
                outcome="failure",
                details={"reason": "client revoked"},
            )
        )
        raise InvalidAccessTokenError("client revoked")

    def _verified_claims(self, token: str) -> dict[str, Any]:
        """The claims of a genuine access token that has not expired.

        A client sends the same token for up to ten minutes, so its signature and claims are checked
        once and remembered until it expires; the expiry itself is checked on every call.
        """
        known = self._claims.get(token)
        if known is not None:
            if not self._unexpired(known):
                raise InvalidAccessTokenError("ExpiredSignatureError")
            return known
        try:
            decoded = jwt.decode_complete(
                token,
                self._verifying_key,
                algorithms=[JWT_ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS, "strict_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise InvalidAccessTokenError(type(exc).__name__) from None
        if decoded["header"].get("typ") != JWT_TYPE:
            raise InvalidAccessTokenError("wrong token type")
        claims: dict[str, Any] = decoded["payload"]
        if len(self._claims) >= VERIFIED_TOKENS_KEPT:
            self._claims.clear()  # a flood of distinct tokens costs their checks, never unbounded memory
        self._claims[token] = claims
        return claims

    def _unexpired(self, claims: Mapping[str, Any]) -> bool:
        # As PyJWT judges "exp", with the same leeway, against the system clock (not the stamping clock).
        return self.system_clock() < float(claims["exp"]) + CLOCK_LEEWAY_SECONDS

    # ------------------------------------------------------------------ rate limits

    def token_limits(self, client_id: str, address: str) -> list[Limit]:
        # Made-up client ids share one bucket: they cannot each get a fresh allowance.
        client_key = client_id if _is_client_id(client_id) else "unknown"
        window = self.limits.window_seconds
        return [
            Limit(f"api-token:client:{client_key}", self.limits.token_per_client, window),
            Limit(f"api-token:ip:{address[:64]}", self.limits.token_per_address, window),
        ]

    def api_limits(self, client_id: str) -> list[Limit]:
        return [Limit(f"api:client:{client_id}", self.limits.api_per_client, self.limits.window_seconds)]

    # ------------------------------------------------------------------ records

    def import_records(self, client_id: str, identifier: str, bundle: Mapping[str, Any]) -> ImportResult:
        """Store a patient's FHIR Bundle, all or nothing; its Patient must carry ``identifier``.

        ``identifier`` is ``system|value`` or a bare MRN. Raises BundleRejectedError.
        """
        problem = self._identifier_problem(identifier, bundle)
        if problem is not None:
            raise BundleRejectedError([problem])
        return self.records.import_bundle(bundle, actor=actor_of(client_id), role="integration", source="api")

    def _identifier_problem(self, identifier: str, bundle: Mapping[str, Any]) -> ImportProblem | None:
        system, separator, value = identifier.partition("|")
        if separator and not (system.strip() and value.strip()):
            return ImportProblem(None, "identifier", "the address must name the patient as system|value or an MRN")
        patients = _patient_entries(bundle)
        if len(patients) != 1:
            return None  # the import refuses the bundle and says why
        index, patient = patients[0]
        wanted = self._identifier_key(system, value) if separator else self._mrn_key(identifier)
        held = {self._held_key(found, mrn=not separator) for found in _as_list(patient.get("identifier"))}
        if wanted is not None and wanted in held:
            return None
        return ImportProblem(index, "identifier", "the Patient does not carry the identifier named in the address")

    def _held_key(self, identifier: Any, *, mrn: bool) -> str | None:
        if not isinstance(identifier, Mapping) or not isinstance(identifier.get("value"), str):
            return None
        system, value = identifier.get("system"), identifier["value"]
        if not mrn:
            return self._identifier_key(system, value) if isinstance(system, str) else None
        kind = identifier.get("type")
        codings = _as_list(kind.get("coding")) if isinstance(kind, Mapping) else []
        is_mrn = system == self.records.mrn_system or any(
            isinstance(coding, Mapping) and coding.get("code") == MRN_TYPE_CODE for coding in codings
        )
        return self._mrn_key(value) if is_mrn else None

    # Identifiers compare through the record store's blind index, so they match exactly when
    # the import would file them under the same patient (case and spacing normalized alike).
    def _identifier_key(self, system: str, value: str) -> str | None:
        try:
            return self.records.identifier_index(system, value)
        except ValueError:
            return None

    def _mrn_key(self, mrn: str) -> str | None:
        try:
            return self.records.mrn_index(mrn)
        except ValueError:
            return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _patient_entries(bundle: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    entries = _as_list(bundle.get("entry")) if isinstance(bundle, Mapping) else []
    return [
        (index, entry["resource"])
        for index, entry in enumerate(entries)
        if isinstance(entry, Mapping)
        and isinstance(entry.get("resource"), Mapping)
        and entry["resource"].get("resourceType") == "Patient"
    ]


def _principal(claims: Mapping[str, Any], client_scopes: frozenset[str]) -> Principal:
    # The client's current scopes bound the token's, should they ever be narrowed.
    scopes = frozenset(str(claims["scope"]).split()) & client_scopes
    return Principal(kind="integration", subject_id=str(claims["sub"]), roles=scopes, session_handle=str(claims["jti"]))


def _verify_secret(stored: str, secret: str) -> bool:
    try:
        return SECRET_HASHER.verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False


def _grant_scope(granted: frozenset[str], requested: Collection[str] | None) -> str:
    """The scope to grant: all of ``granted`` when none is asked for, else exactly what was asked."""
    if not requested:
        if not granted:
            raise OAuthError("invalid_scope", "the client holds no scopes")
        return " ".join(sorted(granted))
    extra = set(requested) - granted
    if extra:
        raise OAuthError("invalid_scope", f"scope not granted to this client: {' '.join(sorted(extra))}")
    return " ".join(sorted(set(requested)))
