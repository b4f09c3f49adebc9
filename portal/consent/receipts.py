"""Consent receipts (Kantara Consent Receipt v1.1 fields, ISO/IEC TS 27560 event data), signed by the portal.

A receipt is JSON; its signature is a compact JWS (EdDSA / Ed25519) over the same JSON, so any JOSE
library, or the portal's public key and ten lines of code, can check it years later.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from portal.security.crypto import public_key_fingerprint

RECEIPT_VERSION = "KI-CR-v1.1.0"
SENSITIVE_CATEGORIES = ["health"]


@dataclass(frozen=True)
class ReceiptFacts:
    receipt_id: str
    principal: str  # the pseudonymous patient id
    controller: str
    controller_contact: str
    policy_url: str
    purpose_code: str
    purpose_title: str
    purpose_summary: str
    lawful_basis: str
    categories: list[str]
    recipients: list[str]
    jurisdiction: str
    notice_version: int
    notice_hash: str
    event: str  # grant | withdraw
    channel: str
    at: datetime


def build_receipt(facts: ReceiptFacts) -> dict[str, Any]:
    return {
        "version": RECEIPT_VERSION,
        "jurisdiction": facts.jurisdiction,
        "consentTimestamp": int(facts.at.timestamp()),
        "consentTime": facts.at.isoformat().replace("+00:00", "Z"),
        "collectionMethod": {"portal": "web portal", "staff": "paper form recorded by staff", "api": "system API"}[
            facts.channel
        ],
        "consentReceiptID": facts.receipt_id,
        "language": "en",
        "piiPrincipalId": facts.principal,
        "piiControllers": [
            {"piiController": facts.controller, "contact": facts.controller_contact, "email": facts.controller_contact}
        ],
        "policyUrl": facts.policy_url,
        "services": [
            {
                "service": facts.purpose_title,
                "purposes": [
                    {
                        "purpose": facts.purpose_summary,
                        "purposeCode": facts.purpose_code,
                        "consentType": "EXPLICIT",
                        "lawfulBasis": facts.lawful_basis,
                        "piiCategory": facts.categories,
                        "primaryPurpose": False,
                        "termination": "until withdrawn by the patient",
                        "thirdPartyDisclosure": bool(facts.recipients),
                        "thirdPartyName": "; ".join(facts.recipients),
                    }
                ],
            }
        ],
        "sensitive": True,
        "spiCat": SENSITIVE_CATEGORIES,
        "event": {"type": facts.event, "noticeVersion": facts.notice_version, "noticeSha256": facts.notice_hash},
    }


def sign_receipt(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The downloadable document: the receipt, its JWS, and the key to check it with."""
    public = key.public_key()
    token = jwt.encode(receipt, key, algorithm="EdDSA", headers={"kid": _kid(public)})
    return {
        "receipt": receipt,
        "jws": token,
        "publicKey": base64.b64encode(public.public_bytes_raw()).decode(),
        "publicKeyFingerprint": public_key_fingerprint(public),
    }


def verify_receipt(document: dict[str, Any], public: Ed25519PublicKey) -> dict[str, Any]:
    """The receipt, if its JWS verifies under ``public`` and matches the receipt shown; else ValueError."""
    try:
        signed = jwt.decode(document["jws"], public, algorithms=["EdDSA"], options={"verify_aud": False})
    except (jwt.InvalidTokenError, KeyError) as exc:
        raise ValueError(f"the receipt's signature does not verify: {exc}") from None
    if signed != document["receipt"]:
        raise ValueError("the receipt differs from what was signed")
    return dict(signed)


def _kid(public: Ed25519PublicKey) -> str:
    return public_key_fingerprint(public).replace(" ", "")[:16]


def receipt_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)
