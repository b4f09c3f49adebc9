"""create_app(): the one place the web application is assembled."""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Router
from litestar.config.csrf import CSRFConfig
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp

from portal.access import case_routes
from portal.access import routes as access_routes
from portal.access.api import BATCH_BODY_BYTES
from portal.accounts import routes as account_routes
from portal.accounts import staff_routes
from portal.accounts.activity import describe_event
from portal.api import admin_routes as api_admin_routes
from portal.api import routes as api_routes
from portal.api.bearer import BearerMiddleware
from portal.consent import routes as consent_routes
from portal.container import Portal, build_portal
from portal.dsar import routes as request_routes
from portal.evidence import routes as evidence_routes
from portal.logging import RequestLogMiddleware, configure_logging
from portal.security.csrf import CSRF_COOKIE, CSRF_HEADER
from portal.security.gate import RequestGateMiddleware
from portal.security.guards import Rule, access, enforce_access
from portal.security.headers import security_headers_hook
from portal.security.sessions import SessionMiddleware
from portal.settings import Settings, SettingsError
from portal.web import health, pages, session_routes
from portal.web.errors import http_exception_handler, internal_error_handler
from workers.embedded import EmbeddedWorker

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"
HTMX_FILE = "htmx-2.0.11.min.js"


def create_app(settings: Settings | None = None, portal: Portal | None = None) -> Litestar:
    """Build the web application from settings; refuses unsafe production settings."""
    settings = settings or Settings.from_env()
    problems = settings.problems()
    if problems:
        raise SettingsError("refusing to start: " + "; ".join(problems))
    configure_logging(settings.log_level, json=settings.log_json)
    portal = portal or build_portal(settings)

    app = Litestar(
        route_handlers=[
            # Pages go in one Router: Litestar 2.25 re-registers (and double-wraps) a sync handler
            # when another handler for the same path is registered on the app separately.
            Router(
                path="/",
                route_handlers=[
                    pages.home,
                    health.healthz,
                    health.readyz,
                    session_routes.sign_out,
                    *account_routes.ROUTES,
                    *staff_routes.ROUTES,
                    *consent_routes.ROUTES,
                    *access_routes.ROUTES,
                    *case_routes.ROUTES,
                    *request_routes.ROUTES,
                    *evidence_routes.ROUTES,
                ],
            ),
            api_routes.api_router(),
            api_admin_routes.admin_router(),
            create_static_files_router(
                path="/static", directories=[STATIC], opt=access(Rule.public), include_in_schema=False
            ),
        ],
        dependencies={"portal": Provide(lambda: portal, sync_to_thread=False, use_cache=True)},
        template_config=TemplateConfig(instance=_template_engine(settings)),
        csrf_config=CSRFConfig(
            secret=portal.secret,
            cookie_name=CSRF_COOKIE,
            header_name=CSRF_HEADER,
            cookie_secure=True,
            cookie_httponly=True,
            cookie_samesite="strict",
            exclude=["/api/v1/"],
        ),
        middleware=[
            DefineMiddleware(SessionMiddleware, sessions=portal.sessions),
            # Inside the session middleware: on /api/v1 only a bearer token says who is calling.
            DefineMiddleware(BearerMiddleware, api=portal.api),
        ],
        guards=[enforce_access],
        before_send=[security_headers_hook(settings)],
        exception_handlers={HTTPException: http_exception_handler, Exception: internal_error_handler},
        request_max_body_size=settings.max_body_bytes,
        lifespan=[_background_work(portal)],
        openapi_config=api_routes.openapi_config(),
        # Only /api/v1 is published; its router opts back in.
        include_in_schema=False,
        debug=False,
    )
    app.state.portal = portal
    # Outermost wrappers (inside before_send): they see every request, matched or not.
    app.asgi_handler = _wrap_outer(app.asgi_handler, settings)
    return app


def _wrap_outer(handler: ASGIApp, settings: Settings) -> ASGIApp:
    checked = RequestGateMiddleware(
        handler,
        allowed_hosts=settings.allowed_hosts,
        max_body_bytes=settings.max_body_bytes,
        large_bodies={"/api/v1/access-events": BATCH_BODY_BYTES},
    )
    logged: ASGIApp = RequestLogMiddleware(checked)
    return logged


def _template_engine(settings: Settings) -> JinjaTemplateEngine:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates ship with the code and change only with a restart: no stat() of each file per page.
        auto_reload=False,
    )
    environment.globals.update(
        portal_name=settings.controller_name,
        privacy_contact=settings.mail_from,
        htmx_file=HTMX_FILE,
        active=None,
        describe_event=describe_event,
    )
    return JinjaTemplateEngine.from_environment(environment)


@functools.cache  # once per process: the first app's start-up built what lives as long as the process
def _spare_the_startup_heap_from_collection() -> None:
    """Move what start-up built (modules, models, templates: ~260,000 objects) out of the collector's sight.

    It lives as long as the process, yet each full collection traversed all of it: 110-160 ms
    pauses, with no garbage found, under load, in the middle of requests (measured with
    ``gc.callbacks`` under ``tests/bench/bench_access.py``). Frozen, full collections cost under
    15 ms. Garbage is collected first, so none is frozen; objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def _collect_less_often() -> None:
    """Look for cycles every 20,000 new objects instead of every 700.

    An ingest batch of 1,000 events makes some 300,000 objects, all alive until the batch is stored,
    and the collector walked them again and again for nothing: 1,947 young, 176 middle and 16 full
    collections over 40 batches, 8 µs an event (measured with ``gc.callbacks`` in the web process;
    2.8 µs with these thresholds). Few cycles are made per request, so little memory waits longer.
    """
    gc.set_threshold(20_000, 20, 50)


def _background_work(portal: Portal) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """The event loop's database pool for the API's hot reads; in embedded mode, also the Dramatiq worker
    threads and the watchdog inside the web process."""

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await portal.hot.open()
        await portal.api.client_statuses.open()
        broker = portal.connect_broker()
        worker = None
        if portal.settings.uses_memory_broker:
            worker = EmbeddedWorker(broker, portal.watchdog(), portal.settings.worker_threads)
            worker.start()
        _spare_the_startup_heap_from_collection()
        _collect_less_often()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            await portal.api.client_statuses.close()
            await portal.hot.close()

    return lifespan
