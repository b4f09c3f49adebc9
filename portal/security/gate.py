"""Checks made on every request before routing: the Host header and the declared body size.

They run outside the router so unknown paths are covered too. A body sent without a
Content-Length is still capped by Litestar's own limit when a handler reads it.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

PAGES = {
    400: ("Bad request", "This portal is not served under that host name."),
    413: ("That is too large", "What was sent is larger than this portal accepts."),
}


def _page(status: int) -> bytes:
    title, message = PAGES[status]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="stylesheet" href="/static/portal.css"></head><body><main id="main" class="wrap">'
        f"<h1>{title}</h1><p>{message}</p></main></body></html>"
    ).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def host_name(scope: Scope) -> str:
    host = (_header(scope, b"host") or "").strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def declared_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return -1


class RequestGateMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: tuple[str, ...],
        max_body_bytes: int,
        large_bodies: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed_hosts)
        self.max_body_bytes = max_body_bytes
        # Exact paths allowed a larger body (batch uploads); their own handler enforces it again.
        self.large_bodies = dict(large_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_page(send, refusal)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> int | None:
        if host_name(scope) not in self.allowed:
            return 400
        length = declared_length(scope)
        limit = self.large_bodies.get(scope.get("path", ""), self.max_body_bytes)
        if length is not None and (length < 0 or length > limit):
            return 413 if length > 0 else 400
        return None


async def _send_page(send: Send, status: int) -> None:
    body = _page(status)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)
