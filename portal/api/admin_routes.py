"""Privacy admins register and revoke integration clients. Thin handlers over IntegrationService."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Template

from portal.api.models import IntegrationClient
from portal.api.service import SCOPES, ClientAlreadyRevokedError, ClientFormError
from portal.container import Portal
from portal.security.guards import Rule, access
from portal.security.sessions import Principal
from portal.web.deps import PortalDep

CLIENTS_PATH = "/admin/api-clients"
TEMPLATE = "staff/admin_clients.html"
FormData = URLEncodedBody[dict[str, str | list[str]]]
StaffRequest = Request[Principal, Any, Any]


@get(CLIENTS_PATH, opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False)
def list_clients(portal: PortalDep) -> Template:
    return _page(portal)


@post(CLIENTS_PATH, opt=access(Rule.admin), sync_to_thread=True, include_in_schema=False, status_code=201)
def register_client(request: StaffRequest, portal: PortalDep, data: FormData) -> Template:
    name, scopes = _text(data.get("name")), _list(data.get("scopes"))
    try:
        client, secret = portal.api.create_client(name, scopes, actor=_actor(request))
    except ClientFormError as exc:
        return _page(portal, errors=exc.errors, form={"name": name, "scopes": scopes}, status_code=400)
    return _page(portal, created=client, secret=secret, status_code=201)


@post(
    f"{CLIENTS_PATH}/{{client_id:str}}/revoke",
    opt=access(Rule.admin),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=200,
)
def revoke_client(request: StaffRequest, portal: PortalDep, client_id: FromPath[str]) -> Template:
    try:
        client = portal.api.revoke_client(client_id, actor=_actor(request))
    except LookupError:
        raise NotFoundException("there is no such API client") from None
    except ClientAlreadyRevokedError as exc:
        return _page(portal, notice=f"{exc} — nothing changed.", status_code=409)
    return _page(portal, notice=f"{client.name} is revoked. Its tokens stop working on their next use.")


def _page(
    portal: Portal,
    *,
    errors: dict[str, str] | None = None,
    form: dict[str, Any] | None = None,
    created: IntegrationClient | None = None,
    secret: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Template:
    return Template(
        template_name=TEMPLATE,
        context={
            "active": "admin",
            "clients": portal.api.list_clients(),
            "scopes": SCOPES,
            "errors": errors or {},
            "form": form or {"name": "", "scopes": []},
            "created": created,
            "secret": secret,
            "notice": notice,
            "clients_path": CLIENTS_PATH,
        },
        status_code=status_code,
    )


def _actor(request: StaffRequest) -> str:
    return f"staff:{request.user.subject_id}"


def _text(value: str | list[str] | None) -> str:
    return value if isinstance(value, str) else ""


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def admin_router() -> Router:
    """The pages as one Router (a new one per app).

    Registered one by one on the app, a GET and a POST on the same path make Litestar 2.25 run
    the GET handler's registration twice and wrap its sync function twice (it then answers 500).
    """
    return Router("/", route_handlers=[list_clients, register_client, revoke_client])
