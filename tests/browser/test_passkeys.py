"""Passkeys in a real browser: Chromium's WebAuthn virtual authenticators drive every ceremony.

The patient journey follows the issue: enrol from an invitation, sign out, sign in by autofill
(conditional mediation), sign in by the button, add a second authenticator, remove one, use a
recovery code and register a new passkey. Then: an authenticator without user verification is
refused, a staff member's synced (backup-eligible) passkey is refused, the step-up dialog works
from the keyboard, and the session-expiry warning keeps the session alive.

Headless Chromium has no autofill drop-down to pick from: a virtual authenticator whose
``automaticPresenceSimulation`` is on answers a pending ``mediation: "conditional"`` request by
itself as soon as the page makes it. With presence simulation off the conditional request stays
pending, which is how the button path (and its abort of the conditional request) is tested.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect

from portal.security.sessions import COOKIE_NAME
from tests.browser._flows import Authenticators, assert_accessible, assert_clean, confirm_step_up
from tests.browser.conftest import LiveServer, PageProblems
from tests.support.accounts import new_patient

pytestmark = pytest.mark.browser

# Observes (never replaces) navigator.credentials.get/create: which mediation each call used and
# how it ended. Kept in sessionStorage so the record survives the navigation a sign-in causes.
WEBAUTHN_WATCH = """
(() => {
  if (!window.navigator.credentials || !window.isSecureContext) { return; }
  const KEY = "__webauthnCalls";
  const load = () => JSON.parse(sessionStorage.getItem(KEY) || "[]");
  const save = (calls) => sessionStorage.setItem(KEY, JSON.stringify(calls));
  for (const name of ["get", "create"]) {
    const original = navigator.credentials[name].bind(navigator.credentials);
    navigator.credentials[name] = (options) => {
      const calls = load();
      const index = calls.length;
      calls.push({ method: name, mediation: (options && options.mediation) || null, outcome: "pending" });
      save(calls);
      const settle = (outcome) => { const all = load(); all[index].outcome = outcome; save(all); };
      return original(options).then(
        (credential) => { settle("ok"); return credential; },
        (error) => { settle(error.name); throw error; },
      );
    };
  }
})();
"""


@dataclass(frozen=True)
class Call:
    method: str
    mediation: str | None
    outcome: str


@pytest.fixture
def browser_page(context: BrowserContext, page_and_problems: tuple[Page, PageProblems]) -> Page:
    page, _ = page_and_problems
    context.add_init_script(WEBAUTHN_WATCH)
    page.set_default_timeout(10_000)
    return page


@pytest.fixture
def devices(context: BrowserContext, browser_page: Page) -> Authenticators:
    return Authenticators(context, browser_page)


# ---------------------------------------------------------------------- helpers


def webauthn_calls(page: Page) -> list[Call]:
    raw = page.evaluate("sessionStorage.getItem('__webauthnCalls') || '[]'")
    return [Call(c["method"], c["mediation"], c["outcome"]) for c in json.loads(raw)]


def wait_for_calls(page: Page, count: int, timeout_ms: int = 5_000) -> None:
    """Polls from Python: the page's CSP forbids the eval that ``page.wait_for_function`` relies on."""
    for _ in range(timeout_ms // 50):
        if len(webauthn_calls(page)) >= count:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"expected {count} WebAuthn call(s), saw {webauthn_calls(page)}")


def forget_calls(page: Page) -> None:
    page.evaluate("sessionStorage.removeItem('__webauthnCalls')")


def sign_out(page: Page, origin: str) -> None:
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(origin + "/")
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    assert not signed_in(page)


def enrol_patient(page: Page, live_server: LiveServer, seed: int, *, check_axe: bool = False) -> None:
    """Invitation → date of birth → "Create my passkey" → the recovery-codes welcome page."""
    mrn, birth_date = new_patient(live_server.portal, seed)
    link = live_server.portal.accounts.invite_patient(mrn, actor="system:test")
    response = page.goto(link)
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your account")
    if check_axe:
        assert_accessible(page)
    year, month, day = birth_date.split("-")
    page.get_by_label("Day", exact=True).fill(day)
    page.get_by_label("Month", exact=True).fill(month)
    page.get_by_label("Year", exact=True).fill(year)
    page.get_by_role("button", name="Continue").click()
    create = page.get_by_role("button", name="Create my passkey")
    expect(create).to_be_visible()
    if check_axe:
        assert_accessible(page)
    create.click()
    page.wait_for_url("**/account/recovery-codes?welcome=1")
    expect(page.get_by_role("status")).to_contain_text("Your passkey is set up")


def create_recovery_codes(page: Page) -> list[str]:
    page.get_by_role("button", name="Create recovery codes").click()
    confirm_step_up(page)
    expect(page.get_by_role("heading", name="Your new recovery codes")).to_be_visible()
    codes = page.locator("ol.codes code").all_inner_texts()
    assert len(codes) == 10
    assert all(re.fullmatch(r"[a-z2-9]{6}(-[a-z2-9]{4}){4}", code) for code in codes), codes
    return codes


def signed_in(page: Page) -> bool:
    return any(cookie["name"] == COOKIE_NAME for cookie in page.context.cookies())


def passkey_names(page: Page) -> list[str]:
    return page.locator("table tbody tr td:first-child").all_inner_texts()


# ---------------------------------------------------------------------- the patient journey


def test_patient_passkey_journey(
    live_server: LiveServer,
    browser_page: Page,
    devices: Authenticators,
    page_and_problems: tuple[Page, PageProblems],
) -> None:
    page, problems = browser_page, page_and_problems[1]
    origin = live_server.origin
    laptop = devices.add()

    # 1. Enrol from the invitation, then create recovery codes (after a step-up).
    enrol_patient(page, live_server, seed=201, check_axe=True)
    assert len(devices.credentials(laptop)) == 1
    assert_accessible(page)
    codes = create_recovery_codes(page)
    assert_accessible(page)

    # 2. Sign out; sign in by autofill: the page's conditional request is answered, no button pressed.
    sign_out(page, origin)
    forget_calls(page)
    page.goto(origin + "/signin", wait_until="commit")
    page.wait_for_url(origin + "/patient")
    expect(page.get_by_role("heading", level=1)).to_have_text("My overview")
    assert webauthn_calls(page) == [Call("get", "conditional", "ok")]

    # 3. Sign out; sign in with the button. The laptop does not answer the autofill request (the
    # user ignores the suggestion), so it stays pending until the button aborts it.
    sign_out(page, origin)
    forget_calls(page)
    devices.presence(laptop, enabled=False)
    page.goto(origin + "/signin")
    wait_for_calls(page, 1)
    assert webauthn_calls(page) == [Call("get", "conditional", "pending")]
    assert page.evaluate("PublicKeyCredential.isConditionalMediationAvailable()") is True
    passkey_field = page.get_by_label("Passkey", exact=True)
    expect(passkey_field).to_have_attribute("autocomplete", "username webauthn")
    passkey_field.focus()
    page.keyboard.press("ArrowDown")  # headless Chromium shows no suggestion list to pick from
    assert webauthn_calls(page) == [Call("get", "conditional", "pending")]
    assert_accessible(page)
    devices.presence(laptop, enabled=True)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(origin + "/patient")
    assert webauthn_calls(page) == [Call("get", "conditional", "AbortError"), Call("get", "optional", "ok")]

    # 4. Add a second authenticator, a security key. The step-up is answered by the laptop (the only
    # one holding a registered passkey); when the new passkey is requested only the key is touched.
    page.goto(origin + "/account/passkeys")
    assert passkey_names(page) == ["Passkey 1"]
    assert_accessible(page)
    security_key = devices.add(transport="usb")

    def laptop_steps_aside(route: Route) -> None:
        devices.presence(laptop, enabled=False)
        route.continue_()

    page.route("**/account/passkeys/options", laptop_steps_aside)
    page.get_by_role("button", name="Add a passkey").click()
    page.wait_for_url("**/account/passkeys?added=1")
    page.unroute("**/account/passkeys/options")
    devices.presence(laptop, enabled=True)
    expect(page.get_by_role("status")).to_have_text("Your new passkey is ready.")
    assert passkey_names(page) == ["Passkey 1", "Passkey 2"]
    assert len(devices.credentials(laptop)) == 1
    assert len(devices.credentials(security_key)) == 1

    # 5. Remove the first passkey: the step-up dialog asks for a fresh confirmation first.
    page.get_by_role("button", name="Remove Passkey 1").click()
    confirm_step_up(page)
    page.wait_for_url("**/account/passkeys?removed=1")
    expect(page.get_by_role("status")).to_have_text("The passkey was removed.")
    assert passkey_names(page) == ["Passkey 2"]

    # 6. Both devices are lost: sign in with a recovery code, register a new passkey.
    sign_out(page, origin)
    devices.remove(laptop)
    devices.remove(security_key)
    page.goto(origin + "/signin/recovery")
    assert_accessible(page)
    page.get_by_label("Recovery code", exact=True).fill(codes[0].upper())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/account/passkeys?required=1")
    expect(page.get_by_role("alert").filter(has_text="You signed in with a recovery code")).to_be_visible()
    assert_accessible(page)
    for elsewhere in ("/patient", "/account/security"):
        page.goto(origin + elsewhere)
        page.wait_for_url("**/account/passkeys?required=1")
    new_laptop = devices.add()
    page.get_by_role("button", name="Add a passkey").click()
    page.wait_for_url("**/account/passkeys?added=1")
    assert len(devices.credentials(new_laptop)) == 1
    assert passkey_names(page) == ["Passkey 2", "Passkey 3"]
    response = page.goto(origin + "/patient")
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("My overview")
    expect(page.get_by_text("You have 2 passkeys and 9 unused recovery codes.")).to_be_visible()
    page.goto(origin + "/account/security")
    assert_accessible(page)
    expect(page.get_by_role("cell", name="Signed in with a recovery code")).to_be_visible()

    # The new passkey signs in (by autofill again).
    sign_out(page, origin)
    page.goto(origin + "/signin", wait_until="commit")
    page.wait_for_url(origin + "/patient")
    assert_clean(page, problems)


# ---------------------------------------------------------------------- refusals


def test_sign_in_without_user_verification_is_refused(
    live_server: LiveServer,
    browser_page: Page,
    devices: Authenticators,
    page_and_problems: tuple[Page, PageProblems],
) -> None:
    page, problems = browser_page, page_and_problems[1]
    origin = live_server.origin
    laptop = devices.add()
    enrol_patient(page, live_server, seed=301)
    sign_out(page, origin)
    assert not signed_in(page)
    error = page.get_by_role("alert")

    # The authenticator cannot verify the user: the browser itself refuses the "required" request.
    devices.user_verified(laptop, verified=False)
    forget_calls(page)
    page.goto(origin + "/signin")
    expect(error).to_have_text("The passkey request was cancelled or timed out. Please try again.")
    page.get_by_role("button", name="Sign in with a passkey").click()
    wait_for_calls(page, 2)
    assert webauthn_calls(page) == [
        Call("get", "conditional", "NotAllowedError"),
        Call("get", "optional", "NotAllowedError"),
    ]
    expect(error).to_have_text("The passkey request was cancelled or timed out. Please try again.")
    assert page.url == origin + "/signin"

    # The authenticator answers but its response says the user was not verified: the server refuses.
    devices.user_verified(laptop, verified=True)
    devices.bad_uv_bit(laptop)
    forget_calls(page)
    page.goto(origin + "/signin")
    expect(error).to_contain_text("User verification is required")
    page.get_by_role("button", name="Sign in with a passkey").click()
    wait_for_calls(page, 2)
    assert webauthn_calls(page) == [Call("get", "conditional", "ok"), Call("get", "optional", "ok")]
    expect(error).to_contain_text("User verification is required")
    expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_enabled()

    assert not signed_in(page)
    page.goto(origin + "/patient")
    page.wait_for_url(origin + "/signin?next=/patient")
    assert_clean(page, problems, expected_failures=2)  # the two refused POST /auth/signin


def test_staff_synced_passkey_is_refused_and_device_bound_one_enrols(
    live_server: LiveServer,
    browser_page: Page,
    devices: Authenticators,
    page_and_problems: tuple[Page, PageProblems],
) -> None:
    page, problems = browser_page, page_and_problems[1]
    origin = live_server.origin
    portal = live_server.portal
    link = portal.accounts.create_staff("officer@example.org", "privacy_officer", "Olivia Officer", actor="system:test")

    synced = devices.add(synced=True)
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your staff account")
    assert_accessible(page)
    page.get_by_role("button", name="Create my passkey").click()
    expect(page.get_by_role("alert")).to_contain_text("staff accounts need a device-bound passkey")
    [made] = devices.credentials(synced)
    assert made["backupEligibility"] is True and made["backupState"] is True
    assert page.url == link and not signed_in(page)

    devices.remove(synced)
    device_bound = devices.add()
    page.get_by_role("button", name="Create my passkey").click()
    page.wait_for_url("**/account/recovery-codes?welcome=1")
    [made] = devices.credentials(device_bound)
    assert made["backupEligibility"] is False

    page.goto(origin + "/staff")
    expect(page.get_by_role("heading", level=1)).to_have_text("Privacy office")
    assert_accessible(page)
    mrn, _ = new_patient(portal, seed=401)
    invite = page.get_by_role("region", name="Invite a patient")
    invite.get_by_label("Medical record number (MRN)").fill(mrn)
    invite.get_by_role("button", name="Create invitation").click()
    expect(invite.get_by_role("status")).to_contain_text("Invitation created")
    invitation = invite.locator("[data-invite-link]").inner_text()
    assert invitation.startswith(origin + "/enrol/")
    assert portal.accounts.invitation(invitation.rsplit("/", 1)[1]).status == "live"

    page.goto(origin + "/account/security")
    assert_accessible(page)
    assert_clean(page, problems, expected_failures=1)  # the refused POST /enrol/…/finish


# ---------------------------------------------------------------------- keyboard and session warning


def test_step_up_dialog_works_from_the_keyboard(
    live_server: LiveServer,
    browser_page: Page,
    devices: Authenticators,
    page_and_problems: tuple[Page, PageProblems],
) -> None:
    page, problems = browser_page, page_and_problems[1]
    devices.add()
    enrol_patient(page, live_server, seed=501)
    create = page.get_by_role("button", name="Create recovery codes")
    dialog = page.get_by_role("dialog", name="Confirm it is you")
    active_id = "document.activeElement && document.activeElement.id"

    create.focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    assert page.evaluate(active_id) == "stepup-confirm"
    assert_accessible(page)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(create).to_be_focused()
    assert page.url.endswith("/account/recovery-codes?welcome=1")

    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.keyboard.press("Tab")
    assert page.evaluate(active_id) == "stepup-cancel"
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("heading", name="Your new recovery codes")).to_have_count(0)

    create.focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Your new recovery codes")).to_be_visible()
    assert page.locator("ol.codes code").count() == 10
    assert_clean(page, problems)


def test_session_expiry_warning_and_staying_signed_in(
    live_server: LiveServer,
    browser_page: Page,
    devices: Authenticators,
    page_and_problems: tuple[Page, PageProblems],
) -> None:
    page, problems = browser_page, page_and_problems[1]
    origin = live_server.origin
    devices.add()
    enrol_patient(page, live_server, seed=601)
    page.clock.install()
    page.goto(origin + "/patient")
    idle_seconds = int(page.locator("body").get_attribute("data-idle-seconds") or 0)
    assert idle_seconds == 30 * 60
    warning = page.get_by_role("dialog", name="Are you still there?")
    expect(warning).to_be_hidden()

    page.clock.fast_forward((idle_seconds - 180) * 1000)  # three minutes left: no warning yet
    expect(warning).to_be_hidden()
    page.clock.fast_forward(90 * 1000)  # ninety seconds left: the warning opens
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("you will be signed out in 2 minutes")
    assert_accessible(page)

    with page.expect_response(origin + "/session/ping") as ping:
        warning.get_by_role("button", name="Stay signed in").click()
    assert ping.value.status == 204
    expect(warning).to_be_hidden()
    page.clock.fast_forward(60 * 1000)  # the idle timer started again: no warning a minute later
    expect(warning).to_be_hidden()

    response = page.goto(origin + "/account/security")
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Security")
    assert signed_in(page)
    assert_clean(page, problems)
