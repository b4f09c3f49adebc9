"""WebAuthn ceremonies with py_webauthn: options with server-side challenges, and verification.

Challenges are 32 random bytes kept in the database, single use (claimed by compare-and-set)
and valid for five minutes. Resident keys and user verification are always required.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, parse_authentication_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from portal.accounts.models import Account, Challenge, Credential
from portal.db import Database, utcnow

CHALLENGE_BYTES = 32
CHALLENGE_LIFETIME = timedelta(minutes=5)
CEREMONY_TIMEOUT_MS = 120_000


class CeremonyError(Exception):
    """A WebAuthn response was refused; ``reason`` is safe to log and to show."""

    def __init__(self, reason: str, *, account_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.account_id = account_id


@dataclass(frozen=True)
class Options:
    challenge_id: str
    public_key: dict[str, Any]


@dataclass(frozen=True)
class Assertion:
    credential_id: str
    account_id: str
    new_sign_count: int
    user_verified: bool
    raw: str


@dataclass(frozen=True)
class NewCredential:
    credential_id: str
    public_key: bytes
    sign_count: int
    aaguid: str
    device_type: str
    backed_up: bool
    transports: str


class Ceremonies:
    def __init__(
        self, db: Database, rp_id: str, rp_name: str, origin: str, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.rp_id = rp_id
        self.rp_name = rp_name
        self.origin = origin
        self.clock = clock

    # ------------------------------------------------------------------ challenges

    def _new_challenge(
        self, purpose: str, *, account_id: str | None = None, invitation_id: str | None = None
    ) -> tuple[str, bytes]:
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        handle = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.write() as session:
            session.add(
                Challenge(
                    id=handle,
                    challenge=challenge,
                    purpose=purpose,
                    account_id=account_id,
                    invitation_id=invitation_id,
                    created_at=now,
                    expires_at=now + CHALLENGE_LIFETIME,
                )
            )
        return handle, challenge

    def consume_challenge(self, session: Session, handle: str, purpose: str) -> Challenge:
        """Claim a challenge exactly once; a replayed, expired or foreign one is refused."""
        now = self.clock()
        claimed = session.execute(
            update(Challenge)
            .where(
                Challenge.id == handle,
                Challenge.purpose == purpose,
                Challenge.used_at.is_(None),
                Challenge.expires_at > now,
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise CeremonyError("the sign-in request expired or was already used; please try again")
        found = session.get(Challenge, handle)
        assert found is not None
        return found

    # ------------------------------------------------------------------ registration

    def registration_options(
        self, account: Account, user_name: str, existing: Sequence[Credential], *, invitation_id: str | None = None
    ) -> Options:
        handle, challenge = self._new_challenge("register", account_id=account.id, invitation_id=invitation_id)
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_id=account.user_handle,
            user_name=user_name,
            user_display_name=user_name,
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=[_descriptor(c) for c in existing],
        )
        return Options(handle, json.loads(options_to_json(options)))

    def verify_registration(self, challenge: Challenge, response: str, *, device_bound_only: bool) -> NewCredential:
        try:
            verified = verify_registration_response(
                credential=response,
                expected_challenge=challenge.challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise CeremonyError(
                f"the passkey could not be registered: {exc}", account_id=challenge.account_id
            ) from None
        synced = verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE
        if device_bound_only and synced:
            raise CeremonyError(
                "staff accounts need a device-bound passkey (a security key or this device's built-in "
                "authenticator), not a synced one",
                account_id=challenge.account_id,
            )
        transports = json.loads(response).get("response", {}).get("transports", []) or []
        return NewCredential(
            credential_id=bytes_to_base64url(verified.credential_id),
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            aaguid=str(verified.aaguid),
            device_type="multi_device" if synced else "single_device",
            backed_up=verified.credential_backed_up,
            transports=",".join(str(t) for t in transports if t in {x.value for x in AuthenticatorTransport}),
        )

    # ------------------------------------------------------------------ authentication

    def authentication_options(
        self, purpose: str, *, account_id: str | None = None, credentials: Sequence[Credential] = ()
    ) -> Options:
        """Options for sign-in (discoverable: no allow list) or step-up (the account's own passkeys)."""
        handle, challenge = self._new_challenge(purpose, account_id=account_id)
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            allow_credentials=[_descriptor(c) for c in credentials],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return Options(handle, json.loads(options_to_json(options)))

    @staticmethod
    def credential_id_of(response: str) -> str:
        """The credential id an authentication response names (before it is verified)."""
        try:
            return str(parse_authentication_credential_json(response).id)
        except (WebAuthnException, ValueError, KeyError, TypeError):
            raise CeremonyError("the passkey response is malformed") from None

    def verify_assertion(self, challenge: Challenge, response: str, credential: Credential) -> Assertion:
        try:
            verified = verify_authentication_response(
                credential=response,
                expected_challenge=challenge.challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=credential.public_key,
                credential_current_sign_count=credential.sign_count,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            reason = str(exc)
            if "sign count" in reason.lower():
                reason = "the passkey's signature counter went backwards (possible cloned authenticator)"
            raise CeremonyError(reason, account_id=credential.account_id) from None
        return Assertion(
            credential.id, credential.account_id, verified.new_sign_count, verified.user_verified, response
        )


def _descriptor(credential: Credential) -> PublicKeyCredentialDescriptor:
    transports = [AuthenticatorTransport(t) for t in credential.transports.split(",") if t]
    return PublicKeyCredentialDescriptor(id=base64url_to_bytes(credential.id), transports=transports or None)


def new_user_handle() -> bytes:
    return secrets.token_bytes(32)
