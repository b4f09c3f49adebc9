"""Access and refresh tokens of /api/v1, attacked: each test names the ASVS 5.0 requirement it covers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select, text, update

from portal.api.models import IntegrationClient, RefreshToken
from portal.api.service import SIGNING_KEY_NAME, ApiRateLimits, hash_refresh_token
from portal.container import Portal
from portal.db import utcnow
from tests.conftest import FakeClock, csrf_token, sign_in
from tests.integration.test_api_tokens import (
    ADMIN,
    CLIENTS_PAGE,
    access_token,
    is_authenticated,
    ledger_events,
    post_records,
    refresh,
    register,
    request_tokens,
)

INVALID_TOKEN_CHALLENGE = 'error="invalid_token"'


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _resign(portal: Portal, token: str, headers: dict[str, Any] | None = None, **changes: Any) -> str:
    """The same token with some claims changed (None removes one), signed again with the portal's own key.

    Only the check under test can refuse it: the signature is genuine.
    """
    claims = {**_claims(token), **changes}
    claims = {name: value for name, value in claims.items() if value is not None}
    key = portal.keys.signing_key(SIGNING_KEY_NAME)
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers or {"typ": "at+jwt"})


def _assert_refused(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert INVALID_TOKEN_CHALLENGE in response.headers["www-authenticate"]
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.fixture
def issued(client: TestClient[Litestar], portal: Portal) -> tuple[str, str, str]:
    """A client's id, secret and a valid access token that the API accepts."""
    client_id, secret = register(portal)
    token = access_token(client, client_id, secret)
    assert is_authenticated(post_records(client, token))
    return client_id, secret, token


# ---------------------------------------------------------------------- V9.2.1 validity period


def test_expired_access_token_is_refused(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 9.2.1 (exp verified) and 10.4 (≤ 10 min access tokens): a token minted 11 minutes ago fails."""
    client_id, secret = register(portal)
    portal.api.clock = FakeClock(utcnow() - timedelta(minutes=11))
    _assert_refused(post_records(client, access_token(client, client_id, secret)))
    portal.api.clock = FakeClock(utcnow() - timedelta(minutes=9))
    assert is_authenticated(post_records(client, access_token(client, client_id, secret)))


def test_not_yet_valid_access_token_is_refused(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 9.2.1 (nbf verified, small leeway only): a token valid from 2 minutes ahead fails."""
    client_id, secret = register(portal)
    portal.api.clock = FakeClock(utcnow() + timedelta(minutes=2))
    _assert_refused(post_records(client, access_token(client, client_id, secret)))


def test_a_token_already_verified_is_refused_once_it_expires(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 9.2.1: a token's signature is checked once, but its expiry on every call."""
    _client_id, _secret, token = issued
    expiry = float(_claims(token)["exp"])
    portal.api.system_clock = lambda: expiry + 29  # within the 30 s leeway
    assert is_authenticated(post_records(client, token))
    portal.api.system_clock = lambda: expiry + 31
    _assert_refused(post_records(client, token))


def test_revocation_by_another_web_process_applies_at_once(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 10.4.9: a client revoked elsewhere (here: straight in the database, as another web process
    would) is refused, although this process verified its token before: on SQLite on its very next
    call; on PostgreSQL once the database's notification of the change arrived, milliseconds after the
    commit (portal/api/client_status.py; the test allows seconds)."""
    client_id, _secret, token = issued
    with portal.db.write() as session:
        session.execute(update(IntegrationClient).where(IntegrationClient.id == client_id).values(revoked_at=utcnow()))
    patience = 0.0 if portal.db.is_sqlite else 5.0
    _assert_refused(_first_refused_or_last(lambda: post_records(client, token), patience))


def _first_refused_or_last(call: Callable[[], httpx.Response], patience: float) -> httpx.Response:
    deadline = time.monotonic() + patience
    response = call()
    while response.status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.01)
        response = call()
    return response


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "aud", "iss", "sub", "scope", "jti"])
def test_token_missing_a_required_claim_is_refused(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str], claim: str
) -> None:
    """ASVS 9.2.1 / 9.2.3: a token without exp (never expires) or aud (any audience) is not accepted."""
    _assert_refused(post_records(client, _resign(portal, issued[2], **{claim: None})))


# ---------------------------------------------------------------------- V9.2.3 / 10.3.1 audience, issuer, type


def test_token_for_another_audience_is_refused(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 9.2.3 / 10.3.1: only tokens whose aud is this API are accepted (not a sibling service)."""
    for audience in ("https://portal.test/api/v2", "https://other.example/api/v1", ["https://portal.test/api/v1", "x"]):
        _assert_refused(post_records(client, _resign(portal, issued[2], aud=audience)))


def test_token_from_another_issuer_is_refused(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 9.2.3 / 10.3.3: the issuer is checked, not just the key."""
    _assert_refused(post_records(client, _resign(portal, issued[2], iss="https://evil.example")))


def test_jwt_of_another_type_is_refused(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 9.2.2: only access tokens (typ at+jwt) authorize calls, not other JWTs of the same signer."""
    _assert_refused(post_records(client, _resign(portal, issued[2], headers={"typ": "JWT"})))


# ---------------------------------------------------------------------- V9.1.1 / 9.1.2 / 9.1.3 signature and algorithm


def test_alg_none_is_refused(client: TestClient[Litestar], issued: tuple[str, str, str]) -> None:
    """ASVS 9.1.2: the 'none' algorithm is not on the allow-list (an unsigned token is worthless)."""
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    payload = issued[2].split(".")[1]
    for signature in ("", issued[2].split(".")[2]):
        _assert_refused(post_records(client, f"{header}.{payload}.{signature}"))


def test_algorithm_confusion_with_the_public_key_as_hmac_secret_is_refused(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 9.1.2: an HS256 token 'signed' with the Ed25519 public key (raw or PEM) is refused: only EdDSA."""
    public = portal.keys.signing_key(SIGNING_KEY_NAME).public_key()
    header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
    payload = _b64(json.dumps({**_claims(issued[2]), "scope": "records:write consent:read"}).encode())
    signing_input = f"{header}.{payload}".encode()
    for secret in (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ):
        signature = _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
        _assert_refused(post_records(client, f"{header}.{payload}.{signature}"))


def test_tampered_signature_or_payload_is_refused(client: TestClient[Litestar], issued: tuple[str, str, str]) -> None:
    """ASVS 9.1.1: the signature is verified before any claim is trusted."""
    header, payload, signature = issued[2].split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x01
    _assert_refused(post_records(client, f"{header}.{payload}.{_b64(bytes(raw))}"))
    widened = _b64(json.dumps({**_claims(issued[2]), "scope": "records:write consent:read"}).encode())
    _assert_refused(post_records(client, f"{header}.{widened}.{signature}"))


def test_token_signed_by_another_key_is_refused_even_with_an_embedded_jwk(
    client: TestClient[Litestar], issued: tuple[str, str, str]
) -> None:
    """ASVS 9.1.1 / 9.1.3: only the key store's key verifies tokens; a 'jwk' header is not a trust source."""
    attacker = Ed25519PrivateKey.generate()
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(attacker.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
    }
    forged = jwt.encode(_claims(issued[2]), attacker, algorithm="EdDSA", headers={"typ": "at+jwt", "jwk": jwk})
    _assert_refused(post_records(client, forged))


def test_missing_token_gets_a_bearer_challenge_without_error(client: TestClient[Litestar]) -> None:
    """RFC 6750 §3.1 / ASVS 8.2.1: no credentials → 401 with a plain Bearer challenge."""
    response = post_records(client, "")
    assert response.status_code == 401
    no_header = client.post("/api/v1/patients/MRN-000001/records", json={})
    assert no_header.status_code == 401
    assert no_header.headers["www-authenticate"] == 'Bearer realm="portal-api"'


def test_a_browser_session_does_not_authorize_api_calls(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 3.5.1 / 8.2.1: /api/v1 is exempt from CSRF, so a session cookie must grant nothing there."""
    sign_in(client, portal, kind="staff", roles=ADMIN)
    response = client.post("/api/v1/patients/MRN-000001/records", json={})
    assert response.status_code == 401


# ---------------------------------------------------------------------- V10.3.2 / 10.4.11 scopes


def test_scopes_are_enforced(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.3.2 / 10.4.11: a token without records:write cannot post records (403 insufficient_scope)."""
    reader = access_token(client, *register(portal, "consent:read", name="Consent checker"))
    refused = post_records(client, reader)
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="records:write"' in refused.headers["www-authenticate"]
    both_id, both_secret = register(portal, "consent:read", "records:write", name="EHR")
    narrowed = request_tokens(client, both_id, both_secret, scope="consent:read").json()["access_token"]
    assert post_records(client, narrowed).status_code == 403, "a narrowed token keeps its narrow scope"


def test_scope_not_granted_cannot_be_requested(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.4.11: the token endpoint grants no scope beyond what the admin assigned."""
    client_id, secret = register(portal, "consent:read")
    response = request_tokens(client, client_id, secret, scope="records:write")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


# ---------------------------------------------------------------------- V10.4.5 / 10.4.8 / 10.4.10 refresh tokens


def test_refresh_token_reuse_revokes_the_whole_family(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.4.5: a used refresh token is invalid, and presenting it again revokes every token of its family."""
    client_id, secret = register(portal)
    first = request_tokens(client, client_id, secret).json()
    unrelated = request_tokens(client, client_id, secret).json()
    second = refresh(client, client_id, secret, first["refresh_token"]).json()
    replay = refresh(client, client_id, secret, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    after = refresh(client, client_id, secret, second["refresh_token"])
    assert after.status_code == 400, "the legitimate holder's newer token died with the family"
    assert refresh(client, client_id, secret, unrelated["refresh_token"]).status_code == 200, "other grants live on"
    reuse = ledger_events(portal, "api.token.reuse_detected")
    assert len(reuse) == 1
    assert reuse[0]["actor"] == f"integration:{client_id}"
    assert reuse[0]["outcome"] == "failure"


def test_refresh_tokens_have_an_absolute_expiry(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.4.8: rotation never extends a grant beyond 24 hours from the client-credentials grant."""
    client_id, secret = register(portal)
    clock = FakeClock(utcnow())
    portal.api.clock = clock
    first = request_tokens(client, client_id, secret).json()
    clock.advance(hours=23)
    second = refresh(client, client_id, secret, first["refresh_token"])
    assert second.status_code == 200
    clock.advance(hours=1, seconds=1)
    expired = refresh(client, client_id, secret, second.json()["refresh_token"])
    assert expired.status_code == 400
    assert expired.json()["error"] == "invalid_grant"


def test_refresh_requires_the_owning_client(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.4.10: refresh requests are client-authenticated; a stolen refresh token alone is useless."""
    owner_id, owner_secret = register(portal, name="EHR")
    thief_id, thief_secret = register(portal, name="Lab")
    tokens = request_tokens(client, owner_id, owner_secret).json()
    bare = client.post("/api/v1/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert bare.status_code == 401
    assert bare.json()["error"] == "invalid_client"
    stolen = refresh(client, thief_id, thief_secret, tokens["refresh_token"])
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    assert refresh(client, owner_id, owner_secret, tokens["refresh_token"]).status_code == 200


# ---------------------------------------------------------------------- V10.4.9 revocation by the admin


def test_admin_revocation_takes_effect_on_the_next_call(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 10.4.9: revoking a client in the admin UI stops its access token, refresh token and secret at once."""
    client_id, secret, token = issued
    tokens = request_tokens(client, client_id, secret).json()
    sign_in(client, portal, kind="staff", roles=ADMIN)
    page_token = csrf_token(client)
    assert client.post(f"{CLIENTS_PAGE}/{client_id}/revoke", data={"_csrf_token": page_token}).status_code == 200
    _assert_refused(post_records(client, token))
    _assert_refused(post_records(client, tokens["access_token"]))
    assert request_tokens(client, client_id, secret).json()["error"] == "invalid_client"
    assert refresh(client, client_id, secret, tokens["refresh_token"]).json()["error"] == "invalid_client"
    with portal.db.read() as session:
        live = session.scalars(
            select(RefreshToken).where(RefreshToken.client_id == client_id, RefreshToken.revoked_at.is_(None))
        ).all()
    assert live == []
    assert ledger_events(portal, "api.token.refused")[-1]["actor"] == f"integration:{client_id}"


def test_a_revoked_client_retrying_cannot_flood_the_ledger(
    client: TestClient[Litestar], portal: Portal, issued: tuple[str, str, str]
) -> None:
    """ASVS 2.4.1 / 16.3.x: refused calls with a genuine token still count against the client's limit."""
    client_id, _secret, token = issued
    portal.api.revoke_client(client_id, actor="staff:test-admin")
    portal.api.limits = ApiRateLimits(api_per_client=3)
    statuses = [post_records(client, token).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429], "the call made by the fixture counted too"
    assert len(ledger_events(portal, "api.token.refused")) == 2


# ---------------------------------------------------------------------- V6 / V11 client authentication and secrets


def test_wrong_secret_and_unknown_client_get_the_same_answer(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 10.4.10 / 6.3.8: invalid_client (401) whether the id or the secret is wrong; both are in the ledger."""
    client_id, secret = register(portal)
    wrong = request_tokens(client, client_id, secret + "x")
    unknown = request_tokens(client, "00000000-0000-4000-8000-000000000000", secret)
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    failures = ledger_events(portal, "api.client.authentication_failed")
    assert [event["details"]["reason"] for event in failures] == ["wrong_secret", "unknown_client"]
    assert failures[0]["actor"] == f"integration:{client_id}"


def test_secrets_and_tokens_are_stored_only_as_hashes(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 11.4.2 (Argon2id ≥ 19 MiB, t ≥ 2, p = 1) and 16.2.5 (no secret in the ledger or the tables)."""
    client_id, secret = register(portal)
    tokens = request_tokens(client, client_id, secret).json()
    with portal.db.read() as session:
        stored = session.get(IntegrationClient, client_id)
        hashes = session.scalars(select(RefreshToken.token_hash)).all()
        everything = " ".join(
            str(row)
            for table in ("api_clients", "api_refresh_tokens")
            for row in session.execute(text(f"SELECT * FROM {table}"))
        )
    assert stored is not None
    assert stored.secret_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert hashes == [hash_refresh_token(tokens["refresh_token"])]
    assert secret not in everything
    assert tokens["refresh_token"] not in everything
    ledger = json.dumps([ledger_events(portal, action) for action in ("api.client.created", "api.token.issued")])
    assert secret not in ledger
    assert tokens["refresh_token"] not in ledger


def test_weaker_secret_hash_is_upgraded_on_next_use(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 11.4.2: hashes made with older parameters are re-hashed with the current ones at the next sign-in."""
    client_id, secret = register(portal)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(secret)
    with portal.db.write() as session:
        session.execute(update(IntegrationClient).where(IntegrationClient.id == client_id).values(secret_hash=weak))
    assert request_tokens(client, client_id, secret).status_code == 200
    with portal.db.read() as session:
        upgraded = session.get(IntegrationClient, client_id)
    assert upgraded is not None
    assert upgraded.secret_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_token_endpoint_throttles_guessing(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 6.3.1 / 2.4.1: secret guessing is throttled per client (429 with Retry-After), before any hashing."""
    client_id, _secret = register(portal)
    statuses = [request_tokens(client, client_id, f"guess-{n}").status_code for n in range(31)]
    assert statuses[:30] == [401] * 30
    assert statuses[30] == 429
