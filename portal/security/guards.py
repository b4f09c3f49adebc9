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
SCOPES_KEY = "scopes"
DURING_RECOVERY_KEY = "allowed_during_recovery"


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


def access(*rules: Rule, scopes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``opt`` a route handler passes to declare who may call it.

    Integration clients (bearer tokens on /api/v1) must also hold every scope listed.
    """
    if not rules:
        raise ValueError("a route must allow at least one kind of caller")
    if scopes and Rule.integration not in rules:
        raise ValueError("scopes only apply to routes that integration clients may call")
    return {ACCESS_KEY: frozenset(rules), SCOPES_KEY: frozenset(scopes)}


def effective_roles(principal: Principal) -> frozenset[str]:
    if principal.kind == "patient":
        return frozenset({Rule.patient.value})
    if principal.kind == "integration":
        return frozenset({Rule.integration.value})
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


async def enforce_access(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    # A coroutine although it awaits nothing: Litestar hands a plain function guard to a worker thread.
    rules = handler.opt.get(ACCESS_KEY)
    if rules is None:
        log.error("route.undeclared_access", handler=handler.handler_name)
        raise PermissionDeniedException("this route has no access rule")
    principal = connection.scope.get("user")
    if is_allowed(principal, rules):
        _require_scopes(principal, handler.opt.get(SCOPES_KEY, frozenset()))
        if principal is not None and principal.restricted and not handler.opt.get(DURING_RECOVERY_KEY):
            raise PasskeyRequiredError("register a new passkey before doing anything else")
        return
    if principal is None:
        raise NotAuthorizedException("sign in to continue", headers=_challenge(rules))
    raise PermissionDeniedException("you do not have access to this page")


class PasskeyRequiredError(PermissionDeniedException):
    """After a recovery-code sign-in: the user must register a new passkey first."""


def during_recovery(opt: dict[str, Any]) -> dict[str, Any]:
    """Mark a route as usable while a recovery-code session still has to register a passkey."""
    return {**opt, DURING_RECOVERY_KEY: True}


def _require_scopes(principal: Principal | None, scopes: frozenset[str]) -> None:
    """Integration clients hold their granted scopes in ``roles``; each required one must be there."""
    if principal is None or principal.kind != "integration":
        return
    missing = scopes - principal.roles
    if missing:
        raise PermissionDeniedException(
            f"the token lacks the scope(s): {', '.join(sorted(missing))}",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(sorted(scopes))}"'},
        )


def _challenge(rules: frozenset[Rule]) -> dict[str, str] | None:
    return {"WWW-Authenticate": 'Bearer realm="portal-api"'} if Rule.integration in rules else None
