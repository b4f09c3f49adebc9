"""Probes for load balancers: /healthz (process alive) and /readyz (dependencies usable)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Response, get

from portal.migrate import Schema, is_current
from portal.security.guards import Rule, access
from portal.web.deps import PortalDep
from workers.broker import ping as ping_broker


@get("/healthz", opt=access(Rule.public), sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", opt=access(Rule.public), sync_to_thread=True, include_in_schema=False)
def readyz(portal: PortalDep) -> Response[dict[str, Any]]:
    checks = {
        "database": _check(portal.db.ping),
        "migrations": _check(lambda: _require(is_current(portal.db.engine), "not at the latest migration")),
        "keystore": _check(
            lambda: _require(is_current(portal.keystore_db.engine, Schema.keystore), "not at the latest migration")
        ),
        "broker": _check(lambda: ping_broker(portal.connect_broker())),
    }
    ready = all(value == "ok" for value in checks.values())
    return Response({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


class NotReadyError(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise NotReadyError(message)


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except NotReadyError as exc:
        return f"failed: {exc}"
    except Exception as exc:
        # Only the exception type: connection errors can embed URLs with credentials.
        return f"failed: {type(exc).__name__}"
    return "ok"
