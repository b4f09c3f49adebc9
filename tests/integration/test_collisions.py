"""Writes that look before they insert, retried when a concurrent transaction stored the same key first."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError

from portal.consent.service import ConsentError
from portal.container import Portal
from portal.db import retried_on_collision, unique_key
from portal.records.models import Patient, PatientIdentifier
from tests.support.concurrency import overlapping

IDENTIFIER_KEY = unique_key(cast(Table, PatientIdentifier.__table__), "index")
PATIENT_KEY = unique_key(cast(Table, Patient.__table__), "id")


def _stored_twice(portal: Portal, attempts: list[int], *, identifier: str) -> None:
    """An attempt that always meets a row it did not look for: the identifier is stored again."""
    attempts.append(1)
    with portal.db.write() as session:
        session.add(Patient(id=f"p-{len(attempts)}"))
        session.flush()
        session.add(PatientIdentifier(index=identifier, patient_id=f"p-{len(attempts)}", kind="mrn"))


def test_a_collision_on_the_named_key_is_tried_again_then_given_up(portal: Portal) -> None:
    with portal.db.write() as session:
        session.add(Patient(id="p-0"))
        session.flush()
        session.add(PatientIdentifier(index="taken", patient_id="p-0", kind="mrn"))
    attempts: list[int] = []
    with pytest.raises(IntegrityError):
        retried_on_collision(lambda: _stored_twice(portal, attempts, identifier="taken"), IDENTIFIER_KEY)
    assert len(attempts) == 3


def test_a_collision_on_another_key_is_not_tried_again(portal: Portal) -> None:
    with portal.db.write() as session:
        session.add(Patient(id="p-1"))
    attempts: list[int] = []
    with pytest.raises(IntegrityError):
        retried_on_collision(lambda: _stored_twice(portal, attempts, identifier="free"), IDENTIFIER_KEY)
    assert len(attempts) == 1, "the patient's own key collided, not the identifier's"
    with portal.db.read() as session:
        assert session.get(PatientIdentifier, "free") is None


def test_an_attempt_that_succeeds_returns_its_value(portal: Portal) -> None:
    assert retried_on_collision(lambda: "stored", IDENTIFIER_KEY, PATIENT_KEY) == "stored"


def test_a_table_without_that_key_is_named() -> None:
    with pytest.raises(LookupError, match="patient_identifiers has no unique key on patient_id"):
        unique_key(cast(Table, PatientIdentifier.__table__), "patient_id")


PURPOSE: dict[str, Any] = {
    "code": "quality-audit",
    "title": "Clinical quality audits",
    "summary": "Auditors check samples of records to improve the quality of care.",
    "lawful_basis": "Consent (GDPR Art. 6(1)(a) and 9(2)(a))",
    "categories": ["clinical"],
    "recipients": ["National Clinical Audit Office"],
    "jurisdiction": "EU",
    "mode": "opt-out",
    "purpose_of_use": "HOPERAT",
}


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_purpose_created_twice_at_once_is_refused_the_second_time(portal: Portal) -> None:
    first, second = overlapping(
        portal,
        lambda: portal.consent.create_purpose(**PURPOSE, actor="staff:one"),
        lambda: portal.consent.create_purpose(**PURPOSE, actor="staff:two"),
    )
    first.result()
    with pytest.raises(ConsentError, match="already exists"):
        second.result()


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_two_drafts_at_once_become_the_next_two_versions(portal: Portal) -> None:
    latest = max(notice.version for notice in portal.consent.notices("research-contact"))
    first, second = overlapping(
        portal,
        lambda: portal.consent.draft_notice("research-contact", "## one", material=False, actor="staff:one"),
        lambda: portal.consent.draft_notice("research-contact", "## two", material=False, actor="staff:two"),
    )
    assert (first.result().version, second.result().version) == (latest + 1, latest + 2)


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
def test_a_recipient_registered_twice_at_once_is_one_recipient(portal: Portal) -> None:
    first, second = overlapping(
        portal,
        lambda: portal.requests.register_recipient("Regional HIE", "one@hie.example", actor="staff:one"),
        lambda: portal.requests.register_recipient("Regional HIE", "two@hie.example", actor="staff:two"),
    )
    assert first.result().id == second.result().id
    assert [(r.name, r.contact) for r in portal.requests.recipients()] == [("Regional HIE", "two@hie.example")]
