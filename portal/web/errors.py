"""Friendly error pages and RFC 9457 problem responses; never a stack trace."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Redirect, Template

from portal.security.guards import PasskeyRequiredError

log = structlog.get_logger("portal.errors")

API_PREFIX = "/api/"
PROBLEM_JSON = "application/problem+json"

FRIENDLY: dict[int, tuple[str, str]] = {
    400: (
        "We could not understand that request",
        "Something in what was sent is not valid. Please check it and try again.",
    ),
    401: ("Please sign in", "You need to be signed in to see this page."),
    403: (
        "You cannot do that here",
        "Your account does not have access to this page or action. "
        "If the page has been open for a long time, reload it and try again.",
    ),
    404: ("Page not found", "There is no page at this address. It may have moved, or the link may be mistyped."),
    405: ("That action is not available here", "This page does not accept that kind of request."),
    413: ("That is too large", "What was sent is larger than this portal accepts."),
    429: ("Too many attempts", "Please wait a little before trying again."),
    500: (
        "Something went wrong on our side",
        "The problem has been logged and nothing you submitted was half-saved. Please try again later.",
    ),
    503: ("The portal is temporarily unavailable", "Please try again in a few minutes."),
}


def _status_title(status: int) -> tuple[str, str]:
    if status in FRIENDLY:
        return FRIENDLY[status]
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return phrase, "The request could not be completed."


def _validation_errors(exc: HTTPException) -> list[dict[str, Any]]:
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        return [
            {"field": str(item.get("key", "")), "message": str(item.get("message", ""))}
            for item in exc.extra
            if isinstance(item, dict)
        ]
    return []


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    detail: str | None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    title, message = _status_title(status)
    request_id = request.scope.get("state", {}).get("request_id")
    if request.url.path.startswith(API_PREFIX):
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail or message,
            "instance": request_id,
        }
        if errors:
            body["errors"] = errors
        return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
    return Template(
        template_name="errors/error.html",
        context={"title": title, "message": message, "request_id": request_id, "errors": errors or []},
        status_code=status,
        media_type=MediaType.HTML,
        headers=headers,
    )


def _page_redirect(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any] | None:
    """Pages send people where they can act: to sign in, or to register a passkey after recovery."""
    if request.url.path.startswith(API_PREFIX) or request.method != "GET":
        return None
    if exc.status_code == 401:
        return Redirect(f"/signin?next={quote(request.url.path)}", status_code=303)
    if isinstance(exc, PasskeyRequiredError):
        return Redirect("/account/passkeys?required=1", status_code=303)
    return None


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    redirect = _page_redirect(request, exc)
    if redirect is not None:
        return redirect
    # Client errors carry our own messages; they are safe to show, stack traces never are.
    detail = exc.detail if exc.status_code < 500 else None
    return error_response(
        request, exc.status_code, detail, errors=_validation_errors(exc), headers=dict(exc.headers or {})
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("http.unhandled", exc_type=type(exc).__name__, path=request.url.path, exc_info=exc)
    return error_response(request, 500, None)
