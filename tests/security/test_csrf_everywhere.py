"""CSRF on every unsafe route of the app, enumerated so a new route cannot be forgotten."""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.testing import TestClient

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _unsafe_page_routes(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if route.path.startswith("/api/v1"):
            continue  # bearer tokens, not cookies: CSRF does not apply
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(set(handler.http_methods) & UNSAFE):
                found.append((method, re.sub(r"\{[^}]+\}", "sample", route.path)))
    return found


def test_every_unsafe_route_refuses_a_request_without_the_token(client: TestClient[Litestar], app: Litestar) -> None:
    """ASVS 3.5.1: anti-forgery token required on every state-changing request (forms and htmx alike)."""
    routes = _unsafe_page_routes(app)
    assert len(routes) >= 20, routes
    client.get("/")  # the CSRF cookie is set, but no token is sent with the requests below
    for method, path in routes:
        response = client.request(method, path, data={"x": "1"})
        assert response.status_code == 403, (method, path, response.status_code)
