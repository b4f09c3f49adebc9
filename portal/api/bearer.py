"""Bearer tokens on /api/v1 (RFC 6750): the access token, and nothing else, says who is calling.

The API is exempt from CSRF checks, so a browser's session cookie must never authorize anything
here: this middleware runs after SessionMiddleware and replaces whatever it found. A missing
token leaves no principal (the guard answers 401 with a Bearer challenge); an invalid one is
refused here with ``error="invalid_token"``. Verification also counts the call against the
client's rate limit (429 with Retry-After).
"""

from __future__ import annotations

import structlog
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException
from litestar.types import ASGIApp, Receive, Scope, Send

from portal.api.service import IntegrationService, InvalidAccessTokenError
from portal.security.sessions import Principal

log = structlog.get_logger("portal.api")

API_PREFIX = "/api/v1/"
# Where clients authenticate with their own credentials, and the published schema.
WITHOUT_BEARER = ("/api/v1/token", "/api/v1/schema")
REALM = "portal-api"


def needs_bearer(path: str) -> bool:
    return path.startswith(API_PREFIX) and not any(
        path == prefix or path.startswith(f"{prefix}/") for prefix in WITHOUT_BEARER
    )


class BearerMiddleware:
    def __init__(self, app: ASGIApp, api: IntegrationService) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"].startswith(API_PREFIX):
            scope["user"] = None
            scope["auth"] = None
            token = _bearer_token(scope) if needs_bearer(scope["path"]) else None
            if token is not None:
                scope["user"] = await self._authenticate(token)
        await self.app(scope, receive, send)

    async def _authenticate(self, token: str) -> Principal:
        try:
            return await self.api.verify_access_token_async(token)
        except InvalidAccessTokenError as exc:
            log.info("api.bearer_refused", reason=exc.reason)
            raise NotAuthorizedException(
                "the access token is invalid, expired or revoked",
                headers={
                    "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                    'error_description="the access token is invalid, expired or revoked"'
                },
            ) from None


def _bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer`` header; other schemes count as no token at all."""
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None
