"""Deny by default: every route declares who may call it, and one guard enforces it.

A handler says ``opt=access(Rule.patient)``; a handler without a declaration is refused at
run time, and a test enumerates every route so such a handler fails the build first.
"""

from __future__ import annotations

import enum
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

from portal.security.sessions import Principal

log = structlog.get_logger("portal.security")

ACCESS_KEY = "access"


class Rule(enum.StrEnum):
    public = "public"
    patient = "patient"
    officer = "privacy_officer"
    admin = "privacy_admin"
    regulator = "regulator"
    integration = "integration"


# privacy_admin includes everything a privacy_officer may do.
ROLE_IMPLIES: dict[str, frozenset[str]] = {
    "privacy_admin": frozenset({"privacy_admin", "privacy_officer"}),
    "privacy_officer": frozenset({"privacy_officer"}),
    "regulator": frozenset({"regulator"}),
}


def access(*rules: Rule) -> dict[str, Any]:
    """The ``opt`` a route handler passes to declare who may call it."""
    if not rules:
        raise ValueError("a route must allow at least one kind of caller")
    return {ACCESS_KEY: frozenset(rules)}


def effective_roles(principal: Principal) -> frozenset[str]:
    if principal.kind == "patient":
        return frozenset({Rule.patient.value})
    roles: set[str] = set()
    for role in principal.roles:
        roles |= ROLE_IMPLIES.get(role, frozenset())
    return frozenset(roles)


def is_allowed(principal: Principal | None, rules: frozenset[Rule]) -> bool:
    if Rule.public in rules:
        return True
    if principal is None:
        return False
    return bool(effective_roles(principal) & {rule.value for rule in rules})


def enforce_access(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    rules = handler.opt.get(ACCESS_KEY)
    if rules is None:
        log.error("route.undeclared_access", handler=handler.handler_name)
        raise PermissionDeniedException("this route has no access rule")
    principal = connection.scope.get("user")
    if is_allowed(principal, rules):
        return
    if principal is None:
        raise NotAuthorizedException("sign in to continue")
    raise PermissionDeniedException("you do not have access to this page")
