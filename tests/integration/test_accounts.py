"""Accounts end to end over HTTP with a software authenticator: enrolment, sign-in, step-up, recovery."""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from portal.accounts.models import Account, StepUpEvidence
from portal.accounts.service import AccountError
from portal.container import Portal
from portal.jobs.models import Job
from portal.security.sessions import COOKIE_NAME
from tests.conftest import ORIGIN, FakeClock
from tests.support.accounts import (
    confirm_birth_date,
    enrol_patient,
    enrol_staff,
    new_patient,
    post_form,
    post_json,
    register,
    sign_in_with,
    sign_out,
    step_up,
    token_of,
)
from tests.support.authenticator import SoftwareAuthenticator
from tests.support.concurrency import overlapping

Client = TestClient[Litestar]


@pytest.fixture
def authenticator() -> SoftwareAuthenticator:
    return SoftwareAuthenticator(ORIGIN)


def _actions(portal: Portal, account_id: str) -> list[str]:
    return [e["action"] for e in portal.ledger.entries_for_subject(account_id)]


def _account(portal: Portal, mrn: str) -> Account:
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    account = portal.accounts.account_for_patient(patient_id)
    assert account is not None
    return account


def test_patient_enrols_signs_out_and_signs_in_again(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    assert client.get("/patient").status_code == 200
    sign_out(client)
    assert client.get("/patient", follow_redirects=False).headers["location"] == "/signin?next=/patient"
    signed = sign_in_with(client, authenticator)
    assert signed.status_code == 201 and signed.json() == {"redirect": "/patient"}
    page = client.get("/patient")
    assert page.status_code == 200 and "What we hold about you" in page.text
    account = _account(portal, mrn)
    actions = _actions(portal, account.id)
    for expected in (
        "auth.invitation_created",
        "auth.invitation_verified",
        "auth.enrolled",
        "auth.passkey_added",
        "auth.signout",
        "auth.signin",
    ):
        assert expected in actions
    with portal.db.read() as session:
        kinds = [job.kind for job in session.scalars(select(Job))]
    assert "notify.email" in kinds, "the new passkey is notified"


def test_signin_returns_to_the_page_asked_for(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    sign_out(client)
    options = post_json(client, "/auth/signin/options").json()
    credential = authenticator.get(options["publicKey"])
    for target, expected in (("/account/security", "/account/security"), ("//evil.example/x", "/patient")):
        options = post_json(client, "/auth/signin/options").json()
        credential = authenticator.get(options["publicKey"])
        result = post_json(
            client, "/auth/signin", {"challenge_id": options["challenge_id"], "credential": credential, "next": target}
        )
        assert result.json()["redirect"] == expected, "no open redirect (ASVS 3.7.2)"


def test_session_id_changes_at_signin(client: Client, portal: Portal, authenticator: SoftwareAuthenticator) -> None:
    """ASVS 7.2.4: a new session token at authentication (fixation is impossible)."""
    enrol_patient(client, portal, authenticator)
    first = client.cookies.get(COOKIE_NAME)
    sign_out(client)
    sign_in_with(client, authenticator)
    assert client.cookies.get(COOKIE_NAME) not in (None, first)


def test_wrong_birth_date_five_times_kills_the_invitation(client: Client, portal: Portal) -> None:
    mrn, _birth_date = new_patient(portal)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    for left in (4, 3, 2, 1):
        response = confirm_birth_date(client, token, "1900-01-01")
        assert response.status_code == 400 and f"({left} tries left)" in response.text
    response = confirm_birth_date(client, token, "1900-01-01")
    assert "too many wrong answers" in response.text
    assert client.get(f"/enrol/{token}").status_code == 410
    malformed = post_form(client, f"/enrol/{token}/birth-date", {"day": "31", "month": "2", "year": "2000"})
    assert malformed.status_code == 400


def test_invitation_expires_after_72_hours(client: Client, portal: Portal) -> None:
    clock = FakeClock()
    portal.accounts.clock = clock
    mrn, _ = new_patient(portal)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    clock.advance(hours=72, seconds=1)
    page = client.get(f"/enrol/{token}")
    assert page.status_code == 410 and "has expired" in page.text


def test_invitation_cannot_be_used_twice(client: Client, portal: Portal, authenticator: SoftwareAuthenticator) -> None:
    mrn, birth_date = new_patient(portal)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    confirm_birth_date(client, token, birth_date)
    assert register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", authenticator).status_code == 201
    again = post_json(client, f"/enrol/{token}/options")
    assert again.status_code == 400 and "no longer valid" in again.json()["error"]
    with pytest.raises(Exception, match="already enrolled"):
        portal.accounts.invite_patient(mrn, actor="staff:test")


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"origin_override": "https://evil.example"}, "Unexpected client data origin"),
        ({"rp_id_override": "evil.example"}, "Unexpected RP ID hash"),
        ({"challenge_override": b"x" * 32}, "challenge"),
        ({"corrupt_signature": True}, "Could not verify authentication signature"),
    ],
)
def test_hostile_assertions_are_refused_and_logged(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator, knobs: dict[str, object], message: str
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    sign_out(client)
    response = sign_in_with(client, authenticator, **knobs)
    assert response.status_code == 400 and message.lower() in response.json()["error"].lower()
    assert client.get("/patient", follow_redirects=False).status_code == 303
    account = _account(portal, mrn)
    failure = portal.ledger.entries_for_subject(account.id, actions=["auth.signin_failed"])[0]
    assert failure["outcome"] == "failure" and message.lower() in failure["details"]["reason"].lower()


def test_user_verification_off_is_refused(client: Client, portal: Portal, authenticator: SoftwareAuthenticator) -> None:
    enrol_patient(client, portal, authenticator)
    sign_out(client)
    authenticator.user_verification = False
    response = sign_in_with(client, authenticator)
    assert response.status_code == 400 and "user verification" in response.json()["error"].lower()


def test_replayed_challenge_is_refused(client: Client, portal: Portal, authenticator: SoftwareAuthenticator) -> None:
    enrol_patient(client, portal, authenticator)
    sign_out(client)
    options = post_json(client, "/auth/signin/options").json()
    credential = authenticator.get(options["publicKey"])
    body = {"challenge_id": options["challenge_id"], "credential": credential}
    assert post_json(client, "/auth/signin", body).status_code == 201
    replay = post_json(client, "/auth/signin", body)
    assert replay.status_code == 400 and "already used" in replay.json()["error"]


def test_expired_challenge_is_refused(client: Client, portal: Portal, authenticator: SoftwareAuthenticator) -> None:
    enrol_patient(client, portal, authenticator)
    sign_out(client)
    clock = FakeClock()
    portal.accounts.ceremonies.clock = clock
    options = post_json(client, "/auth/signin/options").json()
    clock.advance(minutes=5, seconds=1)
    credential = authenticator.get(options["publicKey"])
    response = post_json(client, "/auth/signin", {"challenge_id": options["challenge_id"], "credential": credential})
    assert response.status_code == 400 and "expired" in response.json()["error"]


def test_counter_regression_is_refused_as_possible_clone(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    sign_out(client)
    assert sign_in_with(client, authenticator).status_code == 201
    sign_out(client)
    assert sign_in_with(client, authenticator).status_code == 201
    sign_out(client)
    authenticator.set_sign_count(authenticator.credentials[0].credential_id, 0)
    response = sign_in_with(client, authenticator)
    assert response.status_code == 400 and "cloned" in response.json()["error"]
    assert "auth.counter_regression" in _actions(portal, _account(portal, mrn).id)


@pytest.mark.parametrize("body", [{}, {"challenge_id": "x"}, {"challenge_id": "x", "credential": "not an object"}])
def test_malformed_ceremony_json_is_a_clear_400(client: Client, body: dict[str, object]) -> None:
    response = post_json(client, "/auth/signin", body)
    assert response.status_code == 400
    assert "Traceback" not in response.text


def test_garbage_credential_is_refused(client: Client, portal: Portal) -> None:
    options = post_json(client, "/auth/signin/options").json()
    response = post_json(
        client,
        "/auth/signin",
        {"challenge_id": options["challenge_id"], "credential": {"id": "abc", "type": "public-key"}},
    )
    assert response.status_code == 400 and "malformed" in response.json()["error"]


def test_staff_must_use_a_device_bound_passkey(client: Client, portal: Portal) -> None:
    synced = SoftwareAuthenticator(ORIGIN, backup_eligible=True, backed_up=True)
    refused = enrol_staff(client, portal, synced)
    assert refused.status_code == 400 and "device-bound" in refused.json()["error"]
    bound = SoftwareAuthenticator(ORIGIN)
    accepted = enrol_staff(client, portal, bound, email="second@example.org")
    assert accepted.status_code == 201
    assert client.get("/staff").status_code == 200


def test_synced_passkeys_are_fine_for_patients(client: Client, portal: Portal) -> None:
    synced = SoftwareAuthenticator(ORIGIN, backup_eligible=True, backed_up=True)
    mrn = enrol_patient(client, portal, synced)
    assert portal.accounts.passkeys(_account(portal, mrn).id)[0].synced


def test_step_up_rotates_the_session_and_keeps_evidence(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    before = client.cookies.get(COOKIE_NAME)
    refused = post_form(client, "/account/recovery-codes")
    assert refused.status_code == 403 and "confirm it is you" in refused.text
    assert step_up(client, authenticator, "recovery-codes").status_code == 201
    assert client.cookies.get(COOKIE_NAME) != before
    page = post_form(client, "/account/recovery-codes")
    assert page.status_code == 200 and page.text.count("<li><code>") == 10
    account = _account(portal, mrn)
    with portal.db.read() as session:
        evidence = session.scalars(select(StepUpEvidence).where(StepUpEvidence.account_id == account.id)).one()
    assert evidence.user_verified and json.loads(evidence.assertion)["type"] == "public-key"
    entry = portal.ledger.entries_for_subject(account.id, actions=["auth.stepup"])[0]
    assert entry["purpose"] == "recovery-codes" and entry["payload_sha256"]


def test_step_up_goes_stale_after_five_minutes(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    step_up(client, authenticator)
    clock = FakeClock()
    portal.accounts.clock = clock
    clock.now = portal.sessions.clock() + __import__("datetime").timedelta(minutes=5, seconds=1)
    assert post_form(client, "/account/recovery-codes").status_code == 403


def test_recovery_code_forces_a_new_passkey_first(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    step_up(client, authenticator)
    codes_page = post_form(client, "/account/recovery-codes").text
    codes = [line.split("<code>")[1].split("</code>")[0] for line in codes_page.splitlines() if "<li><code>" in line]
    sign_out(client)
    used = post_form(client, "/signin/recovery", {"code": codes[0].upper().replace("-", " ")})
    assert used.status_code == 303 and used.headers["location"] == "/account/passkeys?required=1"
    blocked = client.get("/patient", follow_redirects=False)
    assert blocked.status_code == 303 and blocked.headers["location"] == "/account/passkeys?required=1"
    new_device = SoftwareAuthenticator(ORIGIN)
    added = register(client, "/account/passkeys/options", "/account/passkeys", new_device)
    assert added.status_code == 201, added.text
    assert client.get("/patient").status_code == 200
    sign_out(client)
    reused = post_form(client, "/signin/recovery", {"code": codes[0]})
    assert reused.status_code == 400 and "not valid or was already used" in reused.text
    actions = _actions(portal, _account(portal, mrn).id)
    assert "auth.recovery_code_used" in actions and "auth.recovery_code_failed" in actions


def test_adding_a_passkey_normally_needs_step_up(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    refused = post_json(client, "/account/passkeys/options")
    assert refused.status_code == 403
    step_up(client, authenticator)
    second = SoftwareAuthenticator(ORIGIN)
    assert register(client, "/account/passkeys/options", "/account/passkeys", second).status_code == 201
    assert client.get("/account/passkeys").text.count("Stays on one device") == 2


def test_last_passkey_cannot_be_removed_without_recovery_codes(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    account = _account(portal, mrn)
    only = portal.accounts.passkeys(account.id)[0]
    step_up(client, authenticator)
    refused = post_form(client, f"/account/passkeys/{only.id}/remove")
    assert refused.status_code == 400 and "only passkey" in refused.text
    post_form(client, "/account/recovery-codes")
    removed = post_form(client, f"/account/passkeys/{only.id}/remove")
    assert removed.status_code == 303
    assert portal.accounts.passkeys(account.id) == []


def test_passkey_rename_validates_and_is_owner_only(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    own = portal.accounts.passkeys(_account(portal, mrn).id)[0]
    assert post_form(client, f"/account/passkeys/{own.id}/rename", {"name": "  Work   laptop "}).status_code == 303
    assert portal.accounts.passkeys(_account(portal, mrn).id)[0].name == "Work laptop"
    assert post_form(client, f"/account/passkeys/{own.id}/rename", {"name": " "}).status_code == 400
    assert post_form(client, "/account/passkeys/someone-elses/rename", {"name": "x"}).status_code == 400


def test_account_locks_after_100_failures_and_staff_unlocks(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    sign_out(client)
    clock = FakeClock()
    for part in (portal.accounts, portal.accounts.ceremonies, portal.limiter):
        part.clock = clock
    for attempt in range(100):
        clock.advance(minutes=20)  # past the growing delay and the per-address window
        response = sign_in_with(client, authenticator, corrupt_signature=True)
        assert response.status_code == 400, (attempt, response.text)
    account = _account(portal, mrn)
    assert account.status == "locked"
    clock.advance(minutes=20)
    locked = sign_in_with(client, authenticator)
    assert locked.status_code == 400 and "locked" in locked.json()["error"]
    portal.accounts.unlock_patient(mrn, actor="staff:test")
    assert sign_in_with(client, authenticator).status_code == 201


def test_failures_slow_down_long_before_the_lock(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    sign_out(client)
    for _ in range(5):
        sign_in_with(client, authenticator, corrupt_signature=True)
    throttled = sign_in_with(client, authenticator)
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1


def test_signin_is_rate_limited_per_address(client: Client, portal: Portal) -> None:
    for _ in range(60):
        assert post_json(client, "/auth/signin/options").status_code == 201
    limited = post_json(client, "/auth/signin/options")
    assert limited.status_code == 429 and "retry-after" in limited.headers


def test_rate_limiter_fails_closed(client: Client, portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_limits: object) -> None:
        raise RuntimeError("store down")

    monkeypatch.setattr(portal.limiter, "_hit", broken)
    response = post_json(client, "/auth/signin/options")
    assert response.status_code == 429 and response.headers["retry-after"] == "30"


def test_disabling_staff_ends_their_sessions_at_once(client: Client, portal: Portal) -> None:
    bound = SoftwareAuthenticator(ORIGIN)
    assert enrol_staff(client, portal, bound).status_code == 201
    assert client.get("/staff").status_code == 200
    staff = next(a for a in portal.accounts.staff_accounts() if a.email == "officer@example.org")
    portal.accounts.set_disabled(staff.id, True, actor="staff:admin")
    assert client.get("/staff", follow_redirects=False).status_code == 303
    refused = sign_in_with(client, bound)
    assert refused.status_code == 400 and "not active" in refused.json()["error"]


def test_sessions_page_lists_and_ends_other_sessions(
    client: Client, portal: Portal, app: Litestar, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    with TestClient(app, base_url=ORIGIN) as other:
        assert sign_in_with(other, authenticator).status_code == 201
        page = client.get("/account/security")
        assert page.text.count("Sign out this one") == 1 and "(this device)" in page.text
        assert post_form(client, "/account/sessions/end-others").status_code == 303
        assert other.get("/patient", follow_redirects=False).status_code == 303
    assert client.get("/patient").status_code == 200


def test_reenrolment_revokes_everything_and_tells_the_patient(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    mrn = enrol_patient(client, portal, authenticator)
    with pytest.raises(Exception, match="how the patient's identity was checked"):
        portal.accounts.reenrol_patient(mrn, identity_check="id", actor="staff:test")
    link = portal.accounts.reenrol_patient(mrn, identity_check="Passport checked at the front desk", actor="staff:test")
    assert client.get("/patient", follow_redirects=False).status_code == 303, "sessions ended"
    assert sign_in_with(client, authenticator).status_code == 400, "old passkeys revoked"
    account = _account(portal, mrn)
    assert "account.reenrolment" in _actions(portal, account.id)
    assert client.get(f"/enrol/{token_of(link)}").status_code == 200


def test_security_activity_page_shows_plain_language(
    client: Client, portal: Portal, authenticator: SoftwareAuthenticator
) -> None:
    enrol_patient(client, portal, authenticator)
    page = client.get("/account/security")
    assert "A passkey was added" in page.text and "Account set up" in page.text


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_two_officers_inviting_a_new_patient_at_once_make_one_account(portal: Portal) -> None:
    """The second finds the account the first made, and invites again (the first's link stops working),
    as it would a moment later. (On SQLite the write lock keeps the two apart.)"""
    mrn, _ = new_patient(portal)
    first, second = overlapping(
        portal,
        lambda: portal.accounts.invite_patient(mrn, actor="staff:one"),
        lambda: portal.accounts.invite_patient(mrn, actor="staff:two"),
    )
    first_link, second_link = first.result(), second.result()
    with portal.db.read() as session:
        assert len(session.scalars(select(Account).where(Account.kind == "patient")).all()) == 1
    assert portal.accounts.invitation(token_of(first_link)).status == "dead"
    assert portal.accounts.invitation(token_of(second_link)).status == "live"


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_the_same_staff_member_added_twice_at_once_is_refused_the_second_time(portal: Portal) -> None:
    def add() -> str:
        return portal.accounts.create_staff("ada@example.org", "privacy_officer", "Ada", actor="staff:admin")

    first, second = overlapping(portal, add, add)
    assert first.result()
    with pytest.raises(AccountError, match="already exists"):
        second.result()
