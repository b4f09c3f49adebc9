"""Deny by default: every route declares who may call it."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from portal.container import Portal
from portal.security.guards import ACCESS_KEY, Rule
from tests.conftest import csrf_token, sign_in

PUBLIC_ROUTES = {
    "/",
    "/healthz",
    "/readyz",
    "/static",
    "/static/{file_path:path}",
    "/home",
    "/signin",
    "/auth/signin/options",
    "/auth/signin",
    "/signin/recovery",
    "/consent/notices/{code:str}/{version:int}",
    "/enrol/{token:str}",
    "/enrol/{token:str}/birth-date",
    "/enrol/{token:str}/options",
    "/enrol/{token:str}/finish",
    # /api/v1: clients authenticate with their own credentials there; the schema is published.
    "/api/v1/token",
    "/api/v1/token/revoke",
    "/api/v1/schema",
    "/api/v1/schema/openapi.json",
    "/api/v1/schema/{path:str}",
}


def _is_automatic_options(handler: Any) -> bool:
    """Litestar adds an OPTIONS responder per path; it returns no data and is covered by the guard."""
    return set(handler.http_methods) == {"OPTIONS"} and handler.handler_name == "options_handler"


def test_every_route_declares_an_access_rule(app: Litestar) -> None:
    """ASVS 8.2.1 / 8.3.1: a handler without a rule fails the build (and is refused at run time)."""
    undeclared = [
        f"{sorted(handler.http_methods)} {route.path}"
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if ACCESS_KEY not in handler.opt and not _is_automatic_options(handler)
    ]
    assert undeclared == []


def test_only_expected_routes_are_public(app: Litestar) -> None:
    """ASVS 8.2.1: the public surface is an explicit list; anything else needs a signed-in caller."""
    public = sorted(
        route.path
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if Rule.public in handler.opt.get(ACCESS_KEY, ())
    )
    assert set(public) <= PUBLIC_ROUTES
    assert {"/", "/healthz", "/readyz"} <= set(public)


def test_anonymous_caller_gets_401_on_protected_route(client: TestClient[Litestar]) -> None:
    """ASVS 8.2.1: protected functions refuse anonymous callers."""
    token = csrf_token(client)
    assert client.post("/signout", headers={"x-csrftoken": token}).status_code == 401


def test_staff_without_a_known_role_is_refused(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 8.2.1: a staff session whose roles grant nothing is refused (403), not let through."""
    sign_in(client, portal, kind="staff", roles=frozenset({"unknown-role"}))
    token = csrf_token(client)
    assert client.post("/signout", headers={"x-csrftoken": token}).status_code == 403
