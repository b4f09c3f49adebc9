"""A software WebAuthn authenticator (browser + authenticator) for fast Python tests.

This is a test double, but an honest one: it emits the real WebAuthn data formats, so the
server's verification (py_webauthn) is exercised for real, byte for byte:

* client data JSON (WebAuthn Level 3 §5.8.1): ``{"type", "challenge", "origin", "crossOrigin"}``;
* authenticator data (§6.1): ``rpIdHash(32) || flags(1) || signCount(4, big-endian)`` followed,
  on registration, by attested credential data (§6.5.1): ``aaguid(16) || credIdLen(2) || credId ||
  COSE_Key`` (an EC2 / P-256 / ES256 public key, CBOR-encoded);
* attestation object (§6.5): CBOR map ``{"fmt": "none", "attStmt": {}, "authData": ...}``;
* assertion signature (§6.3.3): ECDSA-SHA256, DER-encoded, over
  ``authenticatorData || SHA-256(clientDataJSON)``.

``create()`` / ``get()`` take the options the server produced (``options_to_json(...)`` parsed
into a dict) and return what the browser would POST: the ``PublicKeyCredential.toJSON()`` shape,
binary fields as base64url without padding. Like a browser, they refuse (``AuthenticatorError``)
an RP id that does not match the origin, an unsupported algorithm list, an excluded credential
or an assertion request no held credential can satisfy.

Hostile cases the server must refuse are knobs: per-call ``origin_override``, ``rp_id_override``
(only the rpIdHash changes), ``type_override``, ``challenge_override`` and ``corrupt_signature``;
the ``user_verification`` / ``user_presence`` / ``backup_eligible`` / ``backed_up`` attributes set
the UV / UP / BE / BS flags (``backed_up`` without ``backup_eligible`` is an invalid state, on
purpose); ``set_sign_count()`` rewinds a counter. It deliberately shares no code with py_webauthn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["AAGUID", "AuthenticatorError", "SoftwareAuthenticator", "StoredCredential", "b64url"]

AAGUID = bytes(16)  # all zeros: what a "none" attestation may carry (§6.5.3)
ES256 = -7  # COSE algorithm identifier for ECDSA w/ SHA-256 on P-256

_FLAG_UP, _FLAG_UV, _FLAG_BE, _FLAG_BS, _FLAG_AT = 0x01, 0x04, 0x08, 0x10, 0x40


class AuthenticatorError(Exception):
    """The browser/authenticator refused the ceremony (NotAllowedError, SecurityError, ...)."""


def b64url(data: bytes) -> str:
    """Base64url without padding, as in ``PublicKeyCredential.toJSON()``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class StoredCredential:
    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    discoverable: bool
    sign_count: int

    def cose_public_key(self) -> bytes:
        """The credential public key as a COSE_Key (RFC 9053 §7.1.1), CTAP2 canonical order."""
        numbers = self.private_key.public_key().public_numbers()
        cose = {1: 2, 3: ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        return cbor2.dumps(cose)

    def spki_public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class SoftwareAuthenticator:
    """A platform passkey provider holding ES256 credentials, discoverable or not."""

    def __init__(
        self,
        origin: str,
        rp_id: str | None = None,
        *,
        user_verification: bool = True,
        user_presence: bool = True,
        backup_eligible: bool = False,
        backed_up: bool = False,
        sign_count_start: int = 0,
        increment_counter: bool = True,
    ) -> None:
        self.origin = origin
        self.rp_id = rp_id
        self.user_verification = user_verification
        self.user_presence = user_presence
        self.backup_eligible = backup_eligible
        self.backed_up = backed_up
        self.sign_count_start = sign_count_start
        self.increment_counter = increment_counter
        self.credentials: list[StoredCredential] = []

    # -- public API -------------------------------------------------------------------------

    def create(
        self,
        options: Mapping[str, Any],
        *,
        origin_override: str | None = None,
        rp_id_override: str | None = None,
        type_override: str | None = None,
        challenge_override: bytes | None = None,
    ) -> dict[str, Any]:
        """``navigator.credentials.create()``: make a credential, return RegistrationResponseJSON."""
        rp_id = self._rp_id(options.get("rp", {}).get("id"))
        algs = [param.get("alg") for param in options.get("pubKeyCredParams", [])]
        if algs and ES256 not in algs:
            raise AuthenticatorError(f"NotSupportedError: only ES256 ({ES256}) is supported, got {algs}")
        excluded = {_b64url_decode(c["id"]) for c in options.get("excludeCredentials", [])}
        if any(c.rp_id == rp_id and c.credential_id in excluded for c in self.credentials):
            raise AuthenticatorError("InvalidStateError: a credential in excludeCredentials is held")

        selection = options.get("authenticatorSelection", {})
        resident = selection.get("residentKey") or (
            "required" if selection.get("requireResidentKey") else "discouraged"
        )
        user_handle = _b64url_decode(options["user"]["id"])
        credential = StoredCredential(
            credential_id=secrets.token_bytes(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=rp_id,
            user_handle=user_handle,
            discoverable=resident != "discouraged",
            sign_count=self.sign_count_start,
        )
        if credential.discoverable:  # a new discoverable credential replaces the old one (CTAP2)
            self.credentials = [
                c
                for c in self.credentials
                if not (c.discoverable and c.rp_id == rp_id and c.user_handle == user_handle)
            ]
        self.credentials.append(credential)

        cred_id = credential.credential_id
        attested = AAGUID + len(cred_id).to_bytes(2, "big") + cred_id + credential.cose_public_key()
        auth_data = self._authenticator_data(
            rp_id_override or rp_id, selection.get("userVerification"), credential.sign_count, attested
        )
        attestation_object = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data(
            type_override or "webauthn.create", options["challenge"], challenge_override, origin_override
        )
        extension_results: dict[str, Any] = {}
        if options.get("extensions", {}).get("credProps"):
            extension_results["credProps"] = {"rk": credential.discoverable}
        return {
            "id": b64url(cred_id),
            "rawId": b64url(cred_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "authenticatorData": b64url(auth_data),
                "transports": ["internal"],
                "publicKey": b64url(credential.spki_public_key()),
                "publicKeyAlgorithm": ES256,
            },
            "clientExtensionResults": extension_results,
            "authenticatorAttachment": "platform",
        }

    def get(
        self,
        options: Mapping[str, Any],
        credential_id: bytes | None = None,
        *,
        origin_override: str | None = None,
        rp_id_override: str | None = None,
        type_override: str | None = None,
        challenge_override: bytes | None = None,
        corrupt_signature: bool = False,
    ) -> dict[str, Any]:
        """``navigator.credentials.get()``: sign an assertion, return AuthenticationResponseJSON.

        With a non-empty ``allowCredentials`` any listed credential for the RP qualifies; with an
        empty one, any discoverable credential for the RP. ``credential_id`` narrows the choice
        (the user picking an account); otherwise the most recently created match is used.
        """
        rp_id = self._rp_id(options.get("rpId"))
        allowed = {_b64url_decode(c["id"]) for c in options.get("allowCredentials", [])}
        candidates = [
            c
            for c in self.credentials
            if c.rp_id == rp_id
            and (c.credential_id in allowed if allowed else c.discoverable)
            and (credential_id is None or c.credential_id == credential_id)
        ]
        if not candidates:
            raise AuthenticatorError(f"NotAllowedError: no matching credential for RP {rp_id!r}")
        credential = candidates[-1]
        if self.increment_counter:
            credential.sign_count += 1

        auth_data = self._authenticator_data(
            rp_id_override or rp_id, options.get("userVerification"), credential.sign_count
        )
        client_data = self._client_data(
            type_override or "webauthn.get", options["challenge"], challenge_override, origin_override
        )
        signed = auth_data + hashlib.sha256(client_data).digest()
        if corrupt_signature:  # a valid DER signature, but over different bytes
            signed = bytes([signed[0] ^ 0xFF]) + signed[1:]
        signature = credential.private_key.sign(signed, ec.ECDSA(hashes.SHA256()))

        response: dict[str, Any] = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        if credential.discoverable:  # CTAP2 omits the user entity for non-resident credentials
            response["userHandle"] = b64url(credential.user_handle)
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "response": response,
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def credential(self, credential_id: bytes) -> StoredCredential:
        for stored in self.credentials:
            if stored.credential_id == credential_id:
                return stored
        raise KeyError(credential_id)

    def set_sign_count(self, credential_id: bytes, count: int) -> None:
        """Set a credential's stored counter; the next assertion reports ``count + 1`` (or
        ``count`` with ``increment_counter=False``). Rewinding it simulates a cloned key."""
        if not 0 <= count < 2**32:
            raise ValueError("signCount is an unsigned 32-bit integer")
        self.credential(credential_id).sign_count = count

    # -- data formats -----------------------------------------------------------------------

    def _rp_id(self, from_options: str | None) -> str:
        host = urlsplit(self.origin).hostname or ""
        rp_id = self.rp_id or from_options or host
        # A browser refuses an RP id that is neither the origin's host nor a suffix of it.
        # (rp_id_override only changes the rpIdHash the authenticator writes, not this check.)
        if not (host == rp_id or host.endswith("." + rp_id)):
            raise AuthenticatorError(f"SecurityError: RP id {rp_id!r} is not valid for origin {self.origin!r}")
        return rp_id

    def _authenticator_data(
        self, rp_id: str, uv_requirement: str | None, sign_count: int, attested: bytes = b""
    ) -> bytes:
        flags = _FLAG_UP if self.user_presence else 0
        if self.user_verification and uv_requirement != "discouraged":
            flags |= _FLAG_UV
        if self.backup_eligible:
            flags |= _FLAG_BE
        if self.backed_up:
            flags |= _FLAG_BS
        if attested:
            flags |= _FLAG_AT
        rp_id_hash = hashlib.sha256(rp_id.encode("utf-8")).digest()
        return rp_id_hash + bytes([flags]) + sign_count.to_bytes(4, "big") + attested

    def _client_data(
        self, type_: str, challenge: str, challenge_override: bytes | None, origin_override: str | None
    ) -> bytes:
        client_data = {
            "type": type_,
            "challenge": b64url(challenge_override) if challenge_override is not None else challenge,
            "origin": origin_override or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(client_data, separators=(",", ":")).encode("utf-8")
