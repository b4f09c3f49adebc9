"""Security headers on every response: pages, errors, 404s and static files alike.

Applied as a Litestar ``before_send`` hook, which wraps the whole application (routing,
exception handling, static files), so no response can leave without them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from portal.settings import Settings

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "object-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "manifest-src 'self'",
    )
)
HSTS = "max-age=63072000; includeSubDomains"
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
    "payment=(), usb=(), publickey-credentials-get=(self), publickey-credentials-create=(self)"
)
STATIC_PREFIX = "/static/"
STATIC_CACHE = "public, max-age=3600"


def security_headers(settings: Settings) -> dict[str, str]:
    """The headers every response carries (Cache-Control is decided per path)."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": PERMISSIONS_POLICY,
    }
    if settings.https:
        headers["Strict-Transport-Security"] = HSTS
    return headers


def security_headers_hook(settings: Settings) -> Callable[[Message, Scope], Awaitable[None]]:
    fixed = security_headers(settings)

    async def add_security_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        for name, value in fixed.items():
            headers[name] = value
        # Private pages must never sit in a shared or browser cache; static assets may.
        is_static = scope.get("path", "").startswith(STATIC_PREFIX) and message["status"] == 200
        headers["Cache-Control"] = STATIC_CACHE if is_static else "no-store"
        if not is_static:
            headers["Pragma"] = "no-cache"

    return add_security_headers
