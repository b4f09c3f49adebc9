"""The full security header set, pinned verbatim so any loosening shows in review."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import TestClient

EXPECTED_CSP = (
    "default-src 'none'; object-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "manifest-src 'self'"
)
EXPECTED = {
    "content-security-policy": EXPECTED_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
        "payment=(), usb=(), publickey-credentials-get=(self), publickey-credentials-create=(self)"
    ),
    "strict-transport-security": "max-age=63072000; includeSubDomains",
}

# A page, a 404, a wrong method, a static file, a probe and an API problem response.
RESPONSES = [
    ("GET", "/", 200),
    ("GET", "/no-such-page", 404),
    ("DELETE", "/", 405),
    ("GET", "/static/portal.css", 200),
    ("GET", "/healthz", 200),
    ("GET", "/api/v1/nothing-here", 404),
]


@pytest.mark.parametrize(("method", "path", "status"), RESPONSES)
def test_every_response_carries_the_full_header_set(
    client: TestClient[Litestar], method: str, path: str, status: int
) -> None:
    """ASVS 3.4.1 (HSTS ≥ 1 year, subdomains), 3.4.3 (CSP, object-src/base-uri 'none'), 3.4.4 (nosniff),
    3.4.5 (Referrer-Policy), 3.4.6 (frame-ancestors) — on every response, errors and static files too."""
    response = client.request(method, path)
    assert response.status_code == status
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, name
    assert "unsafe-inline" not in response.headers["content-security-policy"]


def test_private_pages_are_never_cached_but_static_assets_are(client: TestClient[Litestar]) -> None:
    """ASVS 14.3.2: sensitive responses carry no-store; versioned static assets may be cached."""
    assert client.get("/").headers["cache-control"] == "no-store"
    assert client.get("/no-such-page").headers["cache-control"] == "no-store"
    assert client.get("/static/portal.css").headers["cache-control"] == "public, max-age=3600"


def test_wrong_host_is_refused_with_headers(client: TestClient[Litestar]) -> None:
    """ASVS 4.1.x / 13.x: requests for other host names are refused before routing (host header attacks)."""
    response = client.get("/", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert "not served under that host name" in response.text
    assert response.headers["content-security-policy"] == EXPECTED_CSP


def test_no_server_internals_leak(client: TestClient[Litestar]) -> None:
    """ASVS 13.4.6: no version banners."""
    response = client.get("/")
    assert "server" not in response.headers
    assert "x-powered-by" not in response.headers
