"""Bad input gets a clear 4xx page or problem response; failures never show a stack trace."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from portal.container import Portal
from tests.conftest import csrf_token, sign_in


def test_unknown_page_is_a_friendly_404(client: TestClient[Litestar]) -> None:
    response = client.get("/does/not/exist")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert '<h1 id="error-heading">Page not found</h1>' in response.text
    assert response.headers["x-request-id"] in response.text


def test_unknown_api_route_is_a_problem_document(client: TestClient[Litestar]) -> None:
    response = client.get("/api/v1/unknown")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404 and body["title"] == "Page not found"
    assert body["instance"] == response.headers["x-request-id"]


def test_wrong_method_is_405(client: TestClient[Litestar]) -> None:
    response = client.put("/healthz")
    assert response.status_code == 405
    assert "not accept that kind of request" in response.text


def test_oversized_body_is_413(client: TestClient[Litestar], portal: Portal) -> None:
    sign_in(client, portal)
    token = csrf_token(client)
    big = "x" * (portal.settings.max_body_bytes + 10)
    response = client.post("/signout", content=big, headers={"x-csrftoken": token, "content-type": "text/plain"})
    assert response.status_code == 413
    assert "Traceback" not in response.text


def test_malformed_form_is_a_client_error(client: TestClient[Litestar], portal: Portal) -> None:
    sign_in(client, portal)
    token = csrf_token(client)
    response = client.post(
        "/signout",
        content=b"%%%\xff\xfe=&&=",
        headers={"x-csrftoken": token, "content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code < 500


def test_internal_failure_is_a_friendly_500_without_trace(
    client: TestClient[Litestar], portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session store failing mid-request yields our 500 page with a reference, no internals."""
    token = sign_in(client, portal)

    async def broken(_token: str, *, touch: bool) -> None:
        raise RuntimeError("database connection string postgresql://secret@db")

    monkeypatch.setattr(portal.sessions, "load_with_patient", broken)
    response = client.get("/")
    assert token
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.text
    for leak in ("Traceback", "RuntimeError", "postgresql://", "secret@"):
        assert leak not in response.text


def test_readiness_reports_each_dependency(client: TestClient[Litestar]) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "keystore": "ok", "broker": "ok"},
    }
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readiness_fails_when_migrations_are_behind(client: TestClient[Litestar], portal: Portal) -> None:
    from portal import migrate

    migrate.downgrade(portal.settings.database_url, "base")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "failed: not at the latest migration"
