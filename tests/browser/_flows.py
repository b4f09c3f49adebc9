"""Browser helpers shared by the browser tests: virtual authenticators, signed-in contexts, enrolment,
the step-up dialog, and the axe / console / CSP checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, expect

from tests.browser.conftest import CSP_WATCH, LiveServer, PageProblems, csp_violations
from tests.support.accounts import new_patient

FAILED_FETCH = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


class Authenticators:
    """Chromium's virtual WebAuthn authenticators for one page, through the DevTools protocol."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.cdp: CDPSession = context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable", {"enableUI": False})

    def add(self, *, transport: str = "internal", verified: bool = True, synced: bool = False) -> str:
        """An authenticator with resident keys and user verification; ``synced`` sets the BE/BS flags.

        Chrome allows one ``internal`` (platform) authenticator at a time; others are security keys.
        """
        options = {
            "protocol": "ctap2",
            "ctap2Version": "ctap2_1",
            "transport": transport,
            "hasResidentKey": True,
            "hasUserVerification": True,
            "isUserVerified": verified,
            "automaticPresenceSimulation": True,
            "defaultBackupEligibility": synced,
            "defaultBackupState": synced,
        }
        return str(self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"])

    def remove(self, authenticator: str) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})

    def credentials(self, authenticator: str) -> list[dict[str, Any]]:
        found = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
        return list(found["credentials"])

    def presence(self, authenticator: str, *, enabled: bool) -> None:
        """With presence simulation off the authenticator never answers (the user does not touch it)."""
        self.cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": authenticator, "enabled": enabled})

    def user_verified(self, authenticator: str, *, verified: bool) -> None:
        self.cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator, "isUserVerified": verified})

    def bad_uv_bit(self, authenticator: str) -> None:
        """Responses carry UV=0 although the browser asked for (and believes in) verification."""
        self.cdp.send("WebAuthn.setResponseOverrideBits", {"authenticatorId": authenticator, "isBadUV": True})


@dataclass
class Actor:
    """A browser context with its one page and what that page complained about."""

    context: BrowserContext
    page: Page
    problems: PageProblems


def open_context(browser: Browser) -> Actor:
    context = browser.new_context()
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems = PageProblems()
    page.on("console", lambda msg: problems.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))
    return Actor(context, page, problems)


# ---------------------------------------------------------------------- enrolment


def accept_invitation(actor: Actor, link: str, birth_date: str) -> None:
    """Invitation → date of birth → "Create my passkey" → the recovery-codes welcome page."""
    page = actor.page
    page.goto(link)
    year, month, day = birth_date.split("-")
    page.get_by_label("Day", exact=True).fill(day)
    page.get_by_label("Month", exact=True).fill(month)
    page.get_by_label("Year", exact=True).fill(year)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Create my passkey").click()
    page.wait_for_url("**/account/recovery-codes?welcome=1")


def enrol_patient(actor: Actor, live_server: LiveServer, seed: int) -> str:
    """A new synthetic patient, invited and enrolled in ``actor``'s context; returns the MRN."""
    mrn, birth_date = new_patient(live_server.portal, seed)
    accept_invitation(actor, live_server.portal.accounts.invite_patient(mrn, actor="system:test"), birth_date)
    return mrn


def enrol_officer(
    actor: Actor, live_server: LiveServer, *, email: str = "officer@example.org", name: str = "Olivia Officer"
) -> None:
    link = live_server.portal.accounts.create_staff(email, "privacy_officer", name, actor="system:test")
    actor.page.goto(link)
    expect(actor.page.get_by_role("heading", level=1)).to_have_text("Set up your staff account")
    actor.page.get_by_role("button", name="Create my passkey").click()
    actor.page.wait_for_url("**/account/recovery-codes?welcome=1")


# ---------------------------------------------------------------------- page helpers and checks


def confirm_step_up(page: Page) -> None:
    dialog = page.get_by_role("dialog", name="Confirm it is you")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Confirm with passkey").click()


def mark_document(page: Page) -> None:
    """A marker on ``window`` that only survives as long as no new document is loaded."""
    page.evaluate("window.__sameDocument = true")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def assert_accessible(page: Page) -> None:
    results = Axe().run(page)
    assert results.violations_count == 0, f"{page.url}\n{results.generate_report()}"


def assert_clean(page: Page, problems: PageProblems, *, expected_failures: int = 0) -> None:
    """No page errors, no CSP violations, and no console errors except the expected refused requests."""
    assert problems.page_errors == []
    assert csp_violations(page) == []
    unexpected = [e for e in problems.console_errors if not FAILED_FETCH.search(e)]
    assert unexpected == []
    assert len(problems.console_errors) == expected_failures, problems.console_errors
