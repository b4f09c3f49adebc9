"""A live portal on loopback and a real headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from portal import migrate
from portal.app import create_app
from portal.container import Portal, build_portal
from portal.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Records CSP violations the page reports, so tests can assert there are none.
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    origin: str
    portal: Portal
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def serve_portal(data_dir: Path, **overrides: Any) -> Iterator[LiveServer]:
    """A migrated portal on a free loopback port, embedded worker included; ``overrides`` are settings."""
    port = _free_port()
    origin = f"http://localhost:{port}"
    settings = Settings(data_dir=data_dir, origin=origin, **overrides).complete()
    portal = build_portal(settings)
    migrate.upgrade_all(settings.database_url, settings.keystore_url)
    portal.consent.ensure_defaults()
    app = create_app(settings, portal)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(origin, portal, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        portal.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serve_portal(tmp_path_factory.mktemp("live") / "var") as server:
        yield server


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/setup does)")
    launched = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class PageProblems:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context()
    created.add_init_script(CSP_WATCH)
    try:
        yield created
    finally:
        created.close()


@pytest.fixture
def page_and_problems(context: BrowserContext) -> tuple[Page, PageProblems]:
    page = context.new_page()
    problems = PageProblems()
    page.on("console", lambda msg: problems.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))
    return page, problems


def csp_violations(page: Page) -> list[str]:
    return list(page.evaluate("window.__cspViolations"))
