"""Helpers that drive the real HTTP flows (enrolment, sign-in, step-up) with the software authenticator."""

from __future__ import annotations

from datetime import date
from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from portal.container import Portal
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from tests.conftest import csrf_token
from tests.support.authenticator import SoftwareAuthenticator

TODAY = date(2026, 11, 1)


def new_patient(portal: Portal, seed: int = 101) -> tuple[str, str]:
    """Import a synthetic patient; returns (MRN, date of birth)."""
    bundle = generate_patient_bundle(seed, size="small", today=TODAY)
    portal.records.import_bundle(bundle, actor="system:test")
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
    return str(mrn), str(patient["birthDate"])


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def post_json(client: TestClient[Litestar], url: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(url, json=body or {}, headers={"x-csrftoken": csrf_token(client)})


def post_form(client: TestClient[Litestar], url: str, fields: dict[str, str] | None = None) -> Any:
    return client.post(url, data={"_csrf_token": csrf_token(client), **(fields or {})}, follow_redirects=False)


def confirm_birth_date(client: TestClient[Litestar], token: str, birth_date: str) -> Any:
    year, month, day = birth_date.split("-")
    return post_form(client, f"/enrol/{token}/birth-date", {"day": day, "month": month, "year": year})


def register(
    client: TestClient[Litestar], options_url: str, finish_url: str, authenticator: SoftwareAuthenticator, **knobs: Any
) -> Any:
    options = post_json(client, options_url)
    assert options.status_code == 201, options.text
    body = options.json()
    credential = authenticator.create(body["publicKey"], **knobs)
    return post_json(client, finish_url, {"challenge_id": body["challenge_id"], "credential": credential})


def enrol_patient(
    client: TestClient[Litestar], portal: Portal, authenticator: SoftwareAuthenticator, seed: int = 101
) -> str:
    """The whole patient enrolment through HTTP; returns the MRN. The client ends up signed in."""
    mrn, birth_date = new_patient(portal, seed)
    token = token_of(portal.accounts.invite_patient(mrn, actor="staff:test"))
    assert client.get(f"/enrol/{token}").status_code == 200
    assert confirm_birth_date(client, token, birth_date).status_code == 303
    finished = register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", authenticator)
    assert finished.status_code == 201, finished.text
    return mrn


def enrol_staff(
    client: TestClient[Litestar],
    portal: Portal,
    authenticator: SoftwareAuthenticator,
    *,
    role: str = "privacy_officer",
    email: str = "officer@example.org",
) -> Any:
    token = token_of(portal.accounts.create_staff(email, role, "Test Officer", actor="system:test"))
    return register(client, f"/enrol/{token}/options", f"/enrol/{token}/finish", authenticator)


def sign_in_with(client: TestClient[Litestar], authenticator: SoftwareAuthenticator, **knobs: Any) -> Any:
    options = post_json(client, "/auth/signin/options").json()
    credential = authenticator.get(options["publicKey"], **knobs)
    return post_json(client, "/auth/signin", {"challenge_id": options["challenge_id"], "credential": credential})


def step_up(client: TestClient[Litestar], authenticator: SoftwareAuthenticator, purpose: str = "test") -> Any:
    options = post_json(client, "/auth/stepup/options").json()
    credential = authenticator.get(options["publicKey"])
    return post_json(
        client, "/auth/stepup", {"challenge_id": options["challenge_id"], "credential": credential, "purpose": purpose}
    )


def sign_out(client: TestClient[Litestar]) -> None:
    assert post_form(client, "/signout").status_code == 303
