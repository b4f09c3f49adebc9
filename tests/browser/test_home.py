"""The home page in a real browser: renders, no console errors, no CSP violations, accessible."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from tests.browser.conftest import LiveServer, PageProblems, csp_violations

pytestmark = pytest.mark.browser


def test_home_page_renders_cleanly_and_passes_axe(
    live_server: LiveServer, page_and_problems: tuple[Page, PageProblems]
) -> None:
    page, problems = page_and_problems
    response = page.goto(live_server.origin + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.locator("h1").inner_text() == "Your health data, under your control"
    page.wait_for_function("typeof window.htmx === 'object'")
    assert page.evaluate("htmx.version").startswith("2.0.")
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()
    assert problems.console_errors == []
    assert problems.page_errors == []
    assert csp_violations(page) == []


def test_skip_link_is_the_first_tab_stop_and_moves_focus_to_main(
    live_server: LiveServer, page_and_problems: tuple[Page, PageProblems]
) -> None:
    page, _ = page_and_problems
    page.goto(live_server.origin + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_not_found_page_is_friendly_in_the_browser(
    live_server: LiveServer, page_and_problems: tuple[Page, PageProblems]
) -> None:
    page, problems = page_and_problems
    response = page.goto(live_server.origin + "/nowhere")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Page not found"
    assert Axe().run(page).violations_count == 0
    assert csp_violations(page) == []
    assert [e for e in problems.console_errors if "404" not in e] == []
