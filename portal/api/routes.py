"""/api/v1: the OAuth2 token endpoints (RFC 6749, RFC 7009) and the records endpoint. Thin handlers.

Token endpoint errors are RFC 6749 §5.2 JSON documents; every other error is RFC 9457 problem
details (portal.web.errors). The OpenAPI schema published at /api/v1/schema covers these routes only.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from litestar import Request, Response, Router, post
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme
from litestar.params import FromPath, JSONBody, URLEncodedBody

from portal.access.api import post_access_events
from portal.api.service import SCOPES, IssuedTokens, OAuthError
from portal.consent.api import consent_decision
from portal.records.service import BundleRejectedError
from portal.security.guards import Rule, access
from portal.security.sessions import Principal
from portal.web.deps import PortalDep
from portal.web.errors import error_response

API_PATH = "/api/v1"
SCHEMA_PATH = f"{API_PATH}/schema"
SECURITY_SCHEME = "oauth2"


@dataclass
class TokenRequest:
    """RFC 6749 §4.4.2 / §6; client credentials go in HTTP Basic or in client_id/client_secret."""

    grant_type: str | None = None
    scope: str | None = None
    refresh_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


@dataclass
class RevocationRequest:
    """RFC 7009 §2.1."""

    token: str | None = None
    token_type_hint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


@dataclass
class TokenResponse:
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    scope: str


@dataclass
class OAuthErrorResponse:
    error: str
    error_description: str


@dataclass
class RecordsStored:
    created_patient: bool
    counts: dict[str, int]
    updated: int


@dataclass
class ProblemDetails:
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


OAUTH_ERRORS = {
    400: ResponseSpec(data_container=OAuthErrorResponse, description="RFC 6749 §5.2 error"),
    401: ResponseSpec(data_container=OAuthErrorResponse, description="invalid_client"),
    429: ResponseSpec(data_container=ProblemDetails, description="Too many requests (see Retry-After)"),
}


@post(
    "/token",
    opt=access(Rule.public),
    sync_to_thread=True,
    status_code=200,
    summary="Obtain tokens (client credentials or refresh token grant)",
    responses=OAUTH_ERRORS,
)
def token(
    request: Request[Any, Any, Any], portal: PortalDep, data: URLEncodedBody[TokenRequest]
) -> Response[TokenResponse]:
    client_id, client_secret = _client_credentials(request, data.client_id, data.client_secret)
    portal.limiter.check(portal.api.token_limits(client_id, _address(request)))
    grant_type, scopes = _value(data.grant_type), _scopes(data.scope)
    if grant_type == "client_credentials":
        issued = portal.api.issue_tokens(client_id, client_secret, scopes)
    elif grant_type == "refresh_token":
        issued = portal.api.refresh(
            _required(data.refresh_token, "refresh_token"),
            client_id=client_id,
            client_secret=client_secret,
            requested_scopes=scopes,
        )
    elif grant_type is None:
        raise OAuthError("invalid_request", "grant_type is required")
    else:
        raise OAuthError("unsupported_grant_type", "use client_credentials or refresh_token")
    return _token_response(issued)


@post(
    "/token/revoke",
    opt=access(Rule.public),
    sync_to_thread=True,
    status_code=200,
    summary="Revoke a refresh token and its family (RFC 7009)",
    responses=OAUTH_ERRORS,
)
def revoke_token(
    request: Request[Any, Any, Any], portal: PortalDep, data: URLEncodedBody[RevocationRequest]
) -> Response[None]:
    client_id, client_secret = _client_credentials(request, data.client_id, data.client_secret)
    portal.limiter.check(portal.api.token_limits(client_id, _address(request)))
    portal.api.revoke_token(
        _required(data.token, "token"),
        client_id=client_id,
        client_secret=client_secret,
        token_type_hint=_value(data.token_type_hint),
    )
    return Response(None, status_code=200)


@post(
    "/patients/{identifier:str}/records",
    opt=access(Rule.integration, scopes=("records:write",)),
    sync_to_thread=True,
    status_code=201,
    summary="Store a patient's records (FHIR R4 Bundle), all or nothing",
    description="`identifier` is `system|value` (URL-encoded) or a medical record number; "
    "the Bundle's Patient must carry it.",
    security=[{SECURITY_SCHEME: ["records:write"]}],
    responses={422: ResponseSpec(data_container=ProblemDetails, description="The bundle was refused; nothing stored")},
)
def post_patient_records(
    request: Request[Principal, Any, Any], portal: PortalDep, identifier: FromPath[str], data: JSONBody[dict[str, Any]]
) -> RecordsStored:
    result = portal.api.import_records(request.user.subject_id, identifier, data)
    return RecordsStored(created_patient=result.created_patient, counts=result.counts, updated=result.updated)


def oauth_error_response(_request: Request[Any, Any, Any], exc: OAuthError) -> Response[OAuthErrorResponse]:
    headers = {"WWW-Authenticate": 'Basic realm="portal-api"'} if exc.status_code == 401 else {}
    return Response(
        OAuthErrorResponse(error=exc.error, error_description=exc.description),
        status_code=exc.status_code,
        headers=headers,
    )


def bundle_rejected_response(request: Request[Any, Any, Any], exc: BundleRejectedError) -> Response[Any]:
    problems = [{"index": p.index, "field": p.field, "reason": p.reason} for p in exc.problems]
    return error_response(
        request, 422, f"the bundle was refused ({len(problems)} problem(s)); nothing was stored", errors=problems
    )


def _token_response(issued: IssuedTokens) -> Response[TokenResponse]:
    body = TokenResponse(
        access_token=issued.access_token,
        token_type="Bearer",  # noqa: S106 - the RFC 6750 token type, not a secret
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
        scope=issued.scope,
    )
    # RFC 6749 §5.1: responses carrying tokens must not be cached.
    return Response(body, status_code=200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _client_credentials(
    request: Request[Any, Any, Any], form_id: str | None, form_secret: str | None
) -> tuple[str, str]:
    """RFC 6749 §2.3.1: HTTP Basic (form-urlencoded id and secret) or the two form fields, not both."""
    basic = _basic_credentials(request.headers.get("authorization"))
    form_id, form_secret = _value(form_id), _value(form_secret)
    if basic is not None and (form_id or form_secret):
        raise OAuthError("invalid_request", "use one client authentication method, not two")
    if basic is not None:
        return basic
    if form_id and form_secret:
        return form_id, form_secret
    raise OAuthError("invalid_client", "client authentication is required", status_code=401)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials", status_code=401) from None
    client_id, separator, secret = decoded.partition(":")
    if not separator or not client_id or not secret:
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials", status_code=401)
    return unquote_plus(client_id), unquote_plus(secret)


def _value(raw: str | None) -> str | None:
    """RFC 6749 §3.2: a parameter sent without a value counts as omitted."""
    return raw or None


def _required(raw: str | None, name: str) -> str:
    if not raw:
        raise OAuthError("invalid_request", f"{name} is required")
    return raw


def _scopes(raw: str | None) -> list[str] | None:
    return raw.split() if raw else None


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def api_router() -> Router:
    """The /api/v1 routes, the only ones the published schema describes (a new Router per app)."""
    return Router(
        API_PATH,
        route_handlers=[token, revoke_token, post_patient_records, consent_decision, post_access_events],
        include_in_schema=True,
        exception_handlers={OAuthError: oauth_error_response, BundleRejectedError: bundle_rejected_response},
    )


def openapi_config() -> OpenAPIConfig:
    """The OpenAPI document of /api/v1, served as JSON at /api/v1/schema/openapi.json to anyone."""
    return OpenAPIConfig(
        title="Patient privacy portal API",
        version="1",
        path=SCHEMA_PATH,
        render_plugins=[JsonRenderPlugin()],
        openapi_router=Router(SCHEMA_PATH, route_handlers=[], include_in_schema=False, opt=access(Rule.public)),
        components=Components(
            security_schemes={
                SECURITY_SCHEME: SecurityScheme(
                    type="oauth2",
                    description="OAuth2 client credentials; access tokens are EdDSA JWTs valid for 10 minutes.",
                    flows=OAuthFlows(client_credentials=OAuthFlow(token_url=f"{API_PATH}/token", scopes=SCOPES)),
                )
            }
        ),
    )
