"""Signatures anyone can check with the portal's public key: compact JWS (EdDSA / Ed25519)."""

from __future__ import annotations

import base64
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from portal.security.crypto import public_key_fingerprint

_JWS = jwt.PyJWS(algorithms=["EdDSA"])


def key_id(public: Ed25519PublicKey) -> str:
    return public_key_fingerprint(public).replace(" ", "")[:16]


def sign_bytes(data: bytes, key: Ed25519PrivateKey) -> str:
    """A compact JWS whose payload is exactly ``data`` (e.g. the bytes of manifest.json)."""
    return _JWS.encode(data, key, algorithm="EdDSA", headers={"kid": key_id(key.public_key())})


def verify_bytes(token: str, data: bytes, public: Ed25519PublicKey) -> None:
    """Raise ValueError unless ``token`` is a valid signature by ``public`` over exactly ``data``."""
    try:
        signed = _JWS.decode(token, public, algorithms=["EdDSA"])
    except jwt.InvalidTokenError as exc:
        raise ValueError(f"the signature does not verify: {exc}") from None
    if signed != data:
        raise ValueError("the signed content differs from the file")


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def sign_document(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A JSON document with its JWS and the key to check it with (as consent receipts are)."""
    public = key.public_key()
    return {
        "document": document,
        "jws": jwt.encode(document, key, algorithm="EdDSA", headers={"kid": key_id(public)}),
        "publicKey": base64.b64encode(public.public_bytes_raw()).decode(),
        "publicKeyFingerprint": public_key_fingerprint(public),
    }


def verify_document(signed: dict[str, Any], public: Ed25519PublicKey) -> dict[str, Any]:
    try:
        payload = jwt.decode(signed["jws"], public, algorithms=["EdDSA"], options={"verify_aud": False})
    except (jwt.InvalidTokenError, KeyError) as exc:
        raise ValueError(f"the signature does not verify: {exc}") from None
    if payload != signed["document"]:
        raise ValueError("the document differs from what was signed")
    return dict(payload)
