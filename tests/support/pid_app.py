"""A bare ASGI app that answers every request with the id of the process that served it, for tests of how
web processes share connections (``portal.serving``)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def create() -> ASGIApp:
    """The app factory that ``portal.serving.serve`` is given ("tests.support.pid_app:create")."""
    return _answer_with_pid


async def _answer_with_pid(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
