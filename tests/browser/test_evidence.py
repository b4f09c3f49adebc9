"""Evidence for regulators in a real browser.

A patient asks for erasure, two officers approve it (each confirming with their passkey), the
worker carries it out; an officer builds an evidence pack for the completed erasure and shares
it with a regulator (step-up again); the regulator, invited by an admin, enrols a device-bound
passkey, sees the pack, downloads it, and the ``verify.py`` inside it reports every check
passing with nothing but Python and ``cryptography``. Every page is checked with axe.
"""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import cryptography
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser._flows import (
    Actor,
    Authenticators,
    assert_accessible,
    assert_clean,
    confirm_step_up,
    enrol_officer,
    enrol_patient,
    open_context,
)
from tests.browser.conftest import LiveServer

pytestmark = pytest.mark.browser


def _staff(browser: Browser, live_server: LiveServer, name: str) -> Actor:
    actor = open_context(browser)
    Authenticators(actor.context, actor.page).add()  # device-bound, as staff passkeys must be
    enrol_officer(actor, live_server, email=f"{name}@example.org", name=name.capitalize())
    return actor


def _approve(actor: Actor, origin: str, request_id: str) -> None:
    actor.page.goto(f"{origin}/staff/requests/{request_id}")
    assert_accessible(actor.page)
    actor.page.get_by_role("button", name="Confirm with passkey and approve").click()
    confirm_step_up(actor.page)
    actor.page.wait_for_load_state("networkidle")


def _wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _run_verifier(pack: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """verify.py from the pack, without site-packages: only cryptography and cffi on the path."""
    (tmp_path / "verify.py").write_bytes(zipfile.ZipFile(pack).read("verify.py"))
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(cryptography.__file__).parent.parent.iterdir():
        if entry.name in ("cryptography", "cffi") or entry.name.startswith("_cffi_backend"):
            (site / entry.name).symlink_to(entry)
    return subprocess.run(
        [sys.executable, "-S", "-s", "verify.py", str(pack)],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_officer_shares_an_erasure_pack_and_the_regulator_verifies_it(
    live_server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    portal, origin = live_server.portal, live_server.origin
    portal.requests.waiting = timedelta(0)  # no cooling-off period in this test: the erasure runs once approved

    patient = open_context(browser)
    Authenticators(patient.context, patient.page).add()
    enrol_patient(patient, live_server, seed=811)
    patient.page.goto(origin + "/requests/new/erasure")
    patient.page.get_by_label("I understand what will be erased and what must be kept").check()
    patient.page.get_by_role("button", name="Confirm with passkey and ask for erasure").click()
    confirm_step_up(patient.page)
    patient.page.wait_for_url("**/requests/*")
    request_id = patient.page.url.rstrip("/").rsplit("/", 1)[1]

    olivia, oscar = _staff(browser, live_server, "olivia"), _staff(browser, live_server, "oscar")
    _approve(olivia, origin, request_id)
    _approve(oscar, origin, request_id)
    _wait_until(lambda: portal.requests.view(request_id).request.status in ("completed", "partially_completed"))

    recipient = portal.evidence.add_regulator("Data Protection Authority", "dpa@example.org", "DPA-2026-7", actor="t")
    link = portal.evidence.invite_regulator(recipient.id, "rita@dpa.example", "Rita Regulator", actor="staff:admin")

    page: Page = olivia.page
    page.goto(f"{origin}/staff/evidence?request_id={request_id}")
    assert_accessible(page)
    page.get_by_label("For regulator").select_option(label="Data Protection Authority (DPA-2026-7)")
    page.get_by_role("button", name="Build the pack").click()
    page.wait_for_url("**/staff/evidence/*")
    pack_id = page.url.rsplit("/", 1)[1]
    _wait_until(lambda: portal.evidence.pack(pack_id).status == "ready")
    page.reload()
    assert_accessible(page)
    page.get_by_role("button", name="Confirm with passkey and share").click()
    confirm_step_up(page)
    expect(page.get_by_role("status")).to_contain_text("Shared")

    regulator = open_context(browser)
    Authenticators(regulator.context, regulator.page).add()
    regulator.page.goto(link)
    regulator.page.get_by_role("button", name="Create my passkey").click()
    regulator.page.wait_for_url("**/account/recovery-codes?welcome=1")
    regulator.page.goto(origin + "/staff")
    regulator.page.wait_for_url("**/regulator")
    expect(regulator.page.get_by_role("heading", level=1)).to_have_text("Evidence packs shared with you")
    assert_accessible(regulator.page)
    with regulator.page.expect_download() as download_info:
        regulator.page.get_by_role("link", name=f"Download pack {pack_id[:8]}").click()
    saved = tmp_path / "pack.zip"
    download_info.value.save_as(saved)

    result = _run_verifier(saved, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 7 and "Every check passed." in result.stdout
    for actor in (patient, olivia, oscar, regulator):
        assert_clean(actor.page, actor.problems)
        actor.context.close()
