"""Cookie flags pinned verbatim, and CSRF enforced on every unsafe method."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import TestClient

from portal.container import Portal
from portal.security.sessions import clear_session_cookie, session_cookie
from tests.conftest import csrf_token, sign_in


def test_session_cookie_flags_are_pinned() -> None:
    """ASVS 3.3.1 (Secure, prefix), 3.3.2 (SameSite), 3.3.3 (__Host-), 3.3.4 (HttpOnly)."""
    header = session_cookie("abc").to_header(header="")
    assert header == "__Host-portal_session=abc; HttpOnly; Path=/; SameSite=lax; Secure"
    cleared = clear_session_cookie().to_header(header="")
    assert cleared == '__Host-portal_session=""; HttpOnly; Max-Age=0; Path=/; SameSite=lax; Secure'


def test_csrf_cookie_flags_are_pinned(client: TestClient[Litestar]) -> None:
    """ASVS 3.3.1-3.3.4 for the anti-forgery cookie."""
    set_cookie = client.get("/").headers["set-cookie"]
    name_value, *flags = [part.strip() for part in set_cookie.split(";")]
    assert name_value.startswith("__Host-csrftoken=")
    assert flags == ["HttpOnly", "Path=/", "SameSite=strict", "Secure"]


def test_unsafe_method_without_token_is_refused(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 3.5.1: state-changing requests need the anti-forgery token."""
    sign_in(client, portal)
    client.get("/")
    response = client.post("/signout")
    assert response.status_code == 403
    assert "Traceback" not in response.text


def test_wrong_token_is_refused(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 3.5.1: a token that is not the cookie's twin is refused."""
    sign_in(client, portal)
    client.get("/")
    response = client.post("/signout", headers={"x-csrftoken": "forged"})
    assert response.status_code == 403


def test_form_field_token_is_accepted(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 3.5.1: plain HTML forms carry the token in a hidden field."""
    sign_in(client, portal)
    token = csrf_token(client)
    response = client.post("/signout", data={"_csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303


def test_htmx_header_token_is_accepted(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 3.5.1: htmx requests carry the token in the x-csrftoken header from <body hx-headers>."""
    sign_in(client, portal)
    token = csrf_token(client)
    response = client.post("/signout", headers={"x-csrftoken": token, "hx-request": "true"}, follow_redirects=False)
    assert response.status_code == 303
