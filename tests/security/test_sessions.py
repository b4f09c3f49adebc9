"""Server-side sessions: fixation, rotation, expiry, revocation."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Litestar
from litestar.testing import TestClient

from portal.container import Portal
from portal.security.sessions import COOKIE_NAME, hash_session_id
from tests.conftest import ORIGIN, FakeClock, csrf_token, sign_in
from tests.support.accounts import enrol_patient
from tests.support.aio import run_async
from tests.support.authenticator import SoftwareAuthenticator


def _who(client: TestClient[Litestar]) -> int:
    """Status of a request that needs a signed-in patient (the sign-out route is one)."""
    token = csrf_token(client)
    return client.post("/signout", headers={"x-csrftoken": token}, follow_redirects=False).status_code


def test_client_chosen_session_id_is_refused_and_cleared(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 7.2.1 / 7.2.4: only ids the server issued are accepted; a made-up id is cleared."""
    client.cookies.set(COOKIE_NAME, "attacker-chosen-id", domain="portal.test")
    response = client.get("/")
    assert "Max-Age=0" in response.headers.get("set-cookie", "")
    assert '__Host-portal_session=""; HttpOnly; Max-Age=0' in response.headers["set-cookie"]
    with portal.db.read() as session:
        from portal.security.sessions import WebSession

        assert session.get(WebSession, hash_session_id("attacker-chosen-id")) is None


def test_issued_session_is_accepted_and_signout_ends_it(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 7.4.1: signing out invalidates the session on the server."""
    token = sign_in(client, portal)
    assert _who(client) == 303
    client.cookies.set(COOKIE_NAME, token, domain="portal.test")
    assert _who(client) == 401


def test_rotation_issues_a_new_id_and_kills_the_old(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 7.2.4: a new session token at (re-)authentication; the old one stops working."""
    old = sign_in(client, portal)
    with portal.db.write() as session:
        new = portal.sessions.rotate(session, old, stepped_up=True)
    assert new != old
    assert portal.sessions.load(old) is None
    loaded = portal.sessions.load(new)
    assert loaded is not None and loaded.stepped_up_at is not None


def test_session_ids_have_at_least_128_bits(portal: Portal) -> None:
    """ASVS 7.2.3: reference tokens carry ≥128 bits of entropy (32 random bytes here)."""
    with portal.db.write() as session:
        token = portal.sessions.create(session, kind="patient", subject_id="p1")
    assert len(token) >= 43


def test_idle_timeout_patient_30_minutes(portal: Portal) -> None:
    """ASVS 7.3.1: inactivity timeout (patients 30 min)."""
    clock = FakeClock()
    portal.sessions.clock = clock
    with portal.db.write() as session:
        token = portal.sessions.create(session, kind="patient", subject_id="p1")
    clock.advance(minutes=29)
    assert portal.sessions.load(token) is not None
    clock.advance(minutes=29)
    assert portal.sessions.load(token) is not None, "activity resets the idle timer"
    clock.advance(minutes=31)
    assert portal.sessions.load(token) is None


def test_each_page_request_resets_the_idle_timer_and_reads_the_linked_record(
    client: TestClient[Litestar], portal: Portal
) -> None:
    """ASVS 7.3.1: on the web path (the middleware's read), activity keeps a session alive, 30 idle
    minutes end it; the session carries the record the patient's account is linked to."""
    clock = FakeClock(datetime.now(UTC))
    portal.sessions.clock = clock
    mrn = enrol_patient(client, portal, SoftwareAuthenticator(ORIGIN))
    consents = client.get("/consent")
    assert consents.status_code == 200
    token = client.cookies.get(COOKIE_NAME, domain="portal.test") or ""
    loaded = run_async(portal.sessions.load_with_patient, token)
    assert loaded is not None and loaded.patient_id == portal.records.find_by_mrn(mrn)
    for _ in range(3):
        clock.advance(minutes=29)
        assert client.get("/consent").status_code == 200
    assert (stored := portal.sessions.load(token, touch=False)) is not None
    assert stored.last_seen_at == clock.now, "the page request touched the session"
    clock.advance(minutes=31)
    assert client.get("/consent", follow_redirects=False).status_code in {303, 401}


def test_idle_timeout_staff_15_minutes(portal: Portal) -> None:
    """ASVS 7.3.1: staff sessions idle out sooner (15 min)."""
    clock = FakeClock()
    portal.sessions.clock = clock
    with portal.db.write() as session:
        token = portal.sessions.create(session, kind="staff", subject_id="s1", roles=frozenset({"privacy_officer"}))
    clock.advance(minutes=16)
    assert portal.sessions.load(token) is None


def test_absolute_lifetime_12_hours(portal: Portal) -> None:
    """ASVS 7.3.2: absolute maximum session lifetime, however active the user is."""
    clock = FakeClock()
    portal.sessions.clock = clock
    with portal.db.write() as session:
        token = portal.sessions.create(session, kind="patient", subject_id="p1")
    for _ in range(24):
        clock.advance(minutes=29)
        assert portal.sessions.load(token) is not None
    clock.advance(minutes=29)
    assert portal.sessions.load(token) is None


def test_revoke_all_other_sessions(portal: Portal) -> None:
    """ASVS 7.4.3 / 7.5.2: a user can end every other session; the current one stays."""
    with portal.db.write() as session:
        keep = portal.sessions.create(session, kind="patient", subject_id="p1")
        other = portal.sessions.create(session, kind="patient", subject_id="p1")
    kept = portal.sessions.load(keep)
    assert kept is not None
    with portal.db.write() as session:
        ended = portal.sessions.revoke_all(session, subject_id="p1", reason="user", keep_handle=kept.handle)
    assert ended == 1
    assert portal.sessions.load(other) is None
    assert portal.sessions.load(keep) is not None
    assert [s.handle for s in portal.sessions.live_sessions("p1")] == [kept.handle]


def test_background_polls_do_not_keep_an_idle_session_alive(client: TestClient[Litestar], portal: Portal) -> None:
    """ASVS 5.0 V7.3.1: the idle timeout counts the user's activity, not a page polling by itself."""
    from datetime import timedelta

    from sqlalchemy import update

    from portal.security.sessions import WebSession

    token = sign_in(client, portal, kind="staff", roles=frozenset({"privacy_officer"}))
    long_ago = portal.sessions.clock() - timedelta(minutes=10)

    def last_seen() -> object:
        with portal.db.read() as session:
            found = session.get(WebSession, hash_session_id(token))
            assert found is not None
            return found.last_seen_at

    with portal.db.write() as session:
        session.execute(update(WebSession).values(last_seen_at=long_ago))
    assert client.get("/staff/requests", headers={"x-portal-passive": "1"}).status_code == 200
    assert last_seen() == long_ago
    assert client.get("/staff/requests").status_code == 200
    assert last_seen() != long_ago
