"""The machine API: client registration, OAuth2 token endpoints, the records endpoint, the schema."""

from __future__ import annotations

import json
from datetime import date
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from portal.api.models import IntegrationClient
from portal.api.service import ApiRateLimits
from portal.audit.ledger import LedgerEntry
from portal.container import Portal
from portal.db import Database
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from tests.conftest import csrf_token, sign_in

TODAY = date(2026, 11, 1)
ADMIN = frozenset({"privacy_admin"})
CLIENTS_PAGE = "/admin/api-clients"
TOKEN_URL = "/api/v1/token"


# ---------------------------------------------------------------------- helpers (also used by tests/security)


def register(portal: Portal, *scopes: str, name: str = "Main EHR") -> tuple[str, str]:
    """A registered client's id and secret (registration through the UI is tested on its own)."""
    client, secret = portal.api.create_client(name, scopes or ("records:write",), actor="staff:test-admin")
    return client.id, secret


def request_tokens(client: TestClient[Litestar], client_id: str, secret: str, **form: str) -> httpx.Response:
    return client.post(TOKEN_URL, data={"grant_type": "client_credentials", **form}, auth=(client_id, secret))


def refresh(client: TestClient[Litestar], client_id: str, secret: str, refresh_token: str) -> httpx.Response:
    return request_tokens(client, client_id, secret, grant_type="refresh_token", refresh_token=refresh_token)


def access_token(client: TestClient[Litestar], client_id: str, secret: str) -> str:
    response = request_tokens(client, client_id, secret)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_records(
    client: TestClient[Litestar], token: str, identifier: str = "MRN-000001", bundle: Any = None
) -> httpx.Response:
    return client.post(
        f"/api/v1/patients/{quote(identifier, safe='')}/records",
        json={} if bundle is None else bundle,
        headers=bearer(token),
    )


def is_authenticated(response: httpx.Response) -> bool:
    """An empty body gets past authentication and authorization and is refused as a bundle (422)."""
    return response.status_code == 422


def ledger_events(portal: Portal, action: str) -> list[dict[str, Any]]:
    with portal.db.read() as session:
        rows = session.scalars(select(LedgerEntry.entry).where(LedgerEntry.action == action)).all()
    return [json.loads(row) for row in rows]


def make_bundle(seed: int = 1) -> dict[str, Any]:
    return generate_patient_bundle(seed, size="small", today=TODAY)


def mrn_of(bundle: dict[str, Any]) -> str:
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM))


# ---------------------------------------------------------------------- token endpoint


def test_client_credentials_grant_issues_short_lived_tokens(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal, "records:write", "consent:read")
    response = request_tokens(client, client_id, secret)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["scope"] == "consent:read records:write"
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "EdDSA", "typ": "at+jwt"}
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["iss"] == "https://portal.test"
    assert claims["aud"] == "https://portal.test/api/v1"
    assert claims["sub"] == client_id
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert ledger_events(portal, "api.token.issued")[-1]["actor"] == f"integration:{client_id}"


def test_form_credentials_work_but_not_together_with_basic(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    assert client.post(TOKEN_URL, data=form).status_code == 200
    both = client.post(TOKEN_URL, data=form, auth=(client_id, secret))
    assert both.status_code == 400
    assert both.json()["error"] == "invalid_request"


def test_missing_client_authentication_is_invalid_client(client: TestClient[Litestar]) -> None:
    response = client.post(TOKEN_URL, data={"grant_type": "client_credentials"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "u", "password": "p"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ],
)
def test_unknown_or_incomplete_grants_are_refused(
    client: TestClient[Litestar], portal: Portal, form: dict[str, str], error: str
) -> None:
    client_id, secret = register(portal)
    response = client.post(TOKEN_URL, data=form, auth=(client_id, secret))
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert set(response.json()) == {"error", "error_description"}


def test_requested_scope_must_be_granted(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal, "records:write", "consent:read")
    narrowed = request_tokens(client, client_id, secret, scope="consent:read")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "consent:read"
    wider = request_tokens(client, client_id, secret, scope="consent:read access-events:write")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"


def test_refresh_rotates_the_refresh_token(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    first = request_tokens(client, client_id, secret).json()
    second = refresh(client, client_id, secret, first["refresh_token"])
    assert second.status_code == 200
    assert second.headers["cache-control"] == "no-store"
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert is_authenticated(post_records(client, second.json()["access_token"]))
    third = refresh(client, client_id, secret, second.json()["refresh_token"])
    assert third.status_code == 200


def test_client_revokes_its_refresh_token(client: TestClient[Litestar], portal: Portal) -> None:
    """RFC 7009: the token and its family stop working; unknown tokens are not an error."""
    client_id, secret = register(portal)
    tokens = request_tokens(client, client_id, secret).json()
    revoked = client.post(f"{TOKEN_URL}/revoke", data={"token": tokens["refresh_token"]}, auth=(client_id, secret))
    assert revoked.status_code == 200
    assert refresh(client, client_id, secret, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    unknown = client.post(f"{TOKEN_URL}/revoke", data={"token": "never-issued"}, auth=(client_id, secret))
    assert unknown.status_code == 200
    access = client.post(f"{TOKEN_URL}/revoke", data={"token": tokens["access_token"]}, auth=(client_id, secret))
    assert access.status_code == 400
    assert access.json()["error"] == "unsupported_token_type"
    assert ledger_events(portal, "api.token.revoked")[-1]["actor"] == f"integration:{client_id}"


def test_client_cannot_revoke_another_clients_token(client: TestClient[Litestar], portal: Portal) -> None:
    owner_id, owner_secret = register(portal, name="EHR")
    other_id, other_secret = register(portal, name="Lab")
    tokens = request_tokens(client, owner_id, owner_secret).json()
    refused = client.post(f"{TOKEN_URL}/revoke", data={"token": tokens["refresh_token"]}, auth=(other_id, other_secret))
    assert refused.status_code == 400
    assert refresh(client, owner_id, owner_secret, tokens["refresh_token"]).status_code == 200


# ---------------------------------------------------------------------- records endpoint


def test_records_are_stored_for_the_patient_named_by_mrn(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    bundle = make_bundle(seed=11)
    response = post_records(client, access_token(client, client_id, secret), mrn_of(bundle), bundle)
    assert response.status_code == 201
    body = response.json()
    assert body["created_patient"] is True
    assert sum(body["counts"].values()) == len(bundle["entry"])
    assert portal.records.find_by_mrn(mrn_of(bundle)) is not None
    imported = ledger_events(portal, "records.import")[-1]
    assert imported["actor"] == f"integration:{client_id}"
    assert imported["role"] == "integration"


def test_records_accept_a_url_encoded_system_and_value(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    bundle = make_bundle(seed=12)
    token = access_token(client, client_id, secret)
    response = post_records(client, token, f"{MRN_SYSTEM}|{mrn_of(bundle)}", bundle)
    assert response.status_code == 201
    again = post_records(client, token, f"{MRN_SYSTEM}|{mrn_of(bundle)}", bundle)
    assert again.status_code == 201
    assert again.json()["created_patient"] is False
    assert again.json()["updated"] == len(bundle["entry"])


def test_a_bad_bundle_is_refused_with_every_problem_listed(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    bundle = make_bundle(seed=13)
    bundle["entry"][1]["resource"]["resourceType"] = "Spaceship"
    bundle["entry"][2]["resource"]["status"] = {"not": "a code"}
    response = post_records(client, access_token(client, client_id, secret), mrn_of(bundle), bundle)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problems = response.json()["errors"]
    assert {problem["index"] for problem in problems} >= {1, 2}
    assert all(set(problem) == {"index", "field", "reason"} for problem in problems)
    assert portal.records.find_by_mrn(mrn_of(bundle)) is None, "all or nothing"


def test_the_patient_must_carry_the_identifier_in_the_address(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, secret = register(portal)
    bundle = make_bundle(seed=14)
    token = access_token(client, client_id, secret)
    for identifier in ("MRN-999999", f"urn:example:other|{mrn_of(bundle)}"):
        response = post_records(client, token, identifier, bundle)
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {
                "index": 0,
                "field": "identifier",
                "reason": "the Patient does not carry the identifier named in the address",
            }
        ]
    assert portal.records.find_by_mrn(mrn_of(bundle)) is None


# ---------------------------------------------------------------------- rate limits


def test_token_endpoint_is_rate_limited_per_client(client: TestClient[Litestar], portal: Portal) -> None:
    portal.api.limits = ApiRateLimits(token_per_client=2)
    client_id, secret = register(portal)
    assert request_tokens(client, client_id, secret).status_code == 200
    assert request_tokens(client, client_id, "wrong").status_code == 401
    limited = request_tokens(client, client_id, secret)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["content-type"].startswith("application/problem+json")


def test_token_endpoint_is_rate_limited_per_address(client: TestClient[Litestar], portal: Portal) -> None:
    portal.api.limits = ApiRateLimits(token_per_address=2)
    for name in ("EHR", "Lab"):
        assert request_tokens(client, *register(portal, name=name)).status_code == 200
    assert request_tokens(client, *register(portal, name="Pharmacy")).status_code == 429


def test_api_is_rate_limited_per_client(client: TestClient[Litestar], portal: Portal) -> None:
    portal.api.limits = ApiRateLimits(api_per_client=2)
    busy = access_token(client, *register(portal, name="EHR"))
    quiet = access_token(client, *register(portal, name="Lab"))
    assert is_authenticated(post_records(client, busy))
    assert is_authenticated(post_records(client, busy))
    limited = post_records(client, busy)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert is_authenticated(post_records(client, quiet)), "another client has its own allowance"


def test_rate_limits_fail_closed_when_their_store_fails(
    client: TestClient[Litestar], portal: Portal, tmp_path: Any
) -> None:
    client_id, secret = register(portal)
    token = access_token(client, client_id, secret)
    working = portal.limiter.db
    portal.limiter.db = Database.from_url(f"sqlite:///{tmp_path}/missing-folder/limits.sqlite3")
    try:
        refused = request_tokens(client, client_id, secret)
        assert refused.status_code == 429
        assert "retry-after" in refused.headers
        # API calls carry a verified token; their per-client limit is counted in memory (capacity,
        # not guessing), so they do not depend on the shared store.
        assert is_authenticated(post_records(client, token))
    finally:
        portal.limiter.db.dispose()
        portal.limiter.db = working


# ---------------------------------------------------------------------- OpenAPI


def test_openapi_schema_is_public_and_lists_only_api_v1(client: TestClient[Litestar]) -> None:
    response = client.get("/api/v1/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Patient privacy portal API"
    paths = set(schema["paths"])
    assert {"/api/v1/token", "/api/v1/token/revoke", "/api/v1/patients/{identifier}/records"} <= paths
    assert all(path.startswith("/api/v1/") for path in paths), paths
    flow = schema["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/api/v1/token"
    assert set(flow["scopes"]) == {"records:write", "access-events:write", "consent:read"}


# ---------------------------------------------------------------------- admin pages


def _admin(client: TestClient[Litestar], portal: Portal) -> str:
    sign_in(client, portal, kind="staff", roles=ADMIN)
    return csrf_token(client)


def test_admin_registers_a_client_and_sees_the_secret_once(client: TestClient[Litestar], portal: Portal) -> None:
    token = _admin(client, portal)
    page = client.get(CLIENTS_PAGE)
    assert page.status_code == 200
    assert '<label for="name-field">Name</label>' in page.text
    created = client.post(
        CLIENTS_PAGE, data={"_csrf_token": token, "name": "Lab system", "scopes": ["records:write", "consent:read"]}
    )
    assert created.status_code == 201
    assert "shown only this once" in created.text
    with portal.db.read() as session:
        row = session.scalars(select(IntegrationClient).where(IntegrationClient.name == "Lab system")).one()
    secret = created.text.split("<dt>Client secret</dt>")[1].split("<code>")[1].split("</code>")[0]
    assert row.created_by.startswith("staff:")
    assert row.scope_set == {"records:write", "consent:read"}
    assert request_tokens(client, row.id, secret).status_code == 200
    listed = client.get(CLIENTS_PAGE)
    assert "Lab system" in listed.text
    assert secret not in listed.text


@pytest.mark.parametrize(
    ("form", "messages"),
    [
        ({"name": "  ", "scopes": []}, ["Enter a name", "Choose at least one permission"]),
        ({"name": "x" * 81, "scopes": ["records:write"]}, ["at most 80 characters"]),
        ({"name": "EHR", "scopes": ["records:write", "admin:everything"]}, ["Unknown permission: admin:everything"]),
        ({"name": "Main EHR", "scopes": ["consent:read"]}, ["already has this name"]),
    ],
)
def test_admin_form_is_validated_on_the_server(
    client: TestClient[Litestar], portal: Portal, form: dict[str, Any], messages: list[str]
) -> None:
    register(portal, name="Main EHR")
    token = _admin(client, portal)
    response = client.post(CLIENTS_PAGE, data={"_csrf_token": token, **form})
    assert response.status_code == 400
    for message in messages:
        assert message in response.text
    assert 'aria-invalid="true"' in response.text or "scopes-error" in response.text
    assert len(portal.api.list_clients()) == 1


def test_admin_revokes_a_client(client: TestClient[Litestar], portal: Portal) -> None:
    client_id, _secret = register(portal)
    token = _admin(client, portal)
    revoked = client.post(f"{CLIENTS_PAGE}/{client_id}/revoke", data={"_csrf_token": token})
    assert revoked.status_code == 200
    assert "is revoked" in revoked.text
    again = client.post(f"{CLIENTS_PAGE}/{client_id}/revoke", data={"_csrf_token": token})
    assert again.status_code == 409
    missing = client.post(f"{CLIENTS_PAGE}/00000000-0000-0000-0000-000000000000/revoke", data={"_csrf_token": token})
    assert missing.status_code == 404
    event = ledger_events(portal, "api.client.revoked")[-1]
    assert event["actor"].startswith("staff:")
    assert event["object"] == f"api-client:{client_id}"


def test_admin_pages_need_a_privacy_admin_and_a_csrf_token(client: TestClient[Litestar], portal: Portal) -> None:
    anonymous = client.get(CLIENTS_PAGE, follow_redirects=False)
    assert anonymous.status_code in {303, 401}, "refused, or sent to sign in"
    assert anonymous.status_code == 401 or anonymous.headers["location"].startswith("/signin")
    sign_in(client, portal, kind="staff", roles=frozenset({"privacy_officer"}))
    assert client.get(CLIENTS_PAGE).status_code == 403
    sign_in(client, portal, kind="staff", roles=ADMIN)
    assert client.post(CLIENTS_PAGE, data={"name": "EHR", "scopes": "records:write"}).status_code == 403
    assert portal.api.list_clients() == []
