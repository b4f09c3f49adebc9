"""Synthetic demo data for `portal run --demo`: a population a newcomer can click through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date

from sqlalchemy import func, select

from portal.container import Portal
from portal.records.models import Patient
from portal.records.synthetic import generate_patient_bundle, generate_population

DEMO_PATIENTS = 40
DEMO_LARGE = 2
DEMO_SEED = 2026
DEMO_ACTOR = "system:demo-seed"
FORMER_PATIENT_LAST_SEEN = date(2009, 6, 1)


def seed_demo(portal: Portal, *, patients: int = DEMO_PATIENTS, large: int = DEMO_LARGE) -> Iterator[str]:
    """Import the synthetic population once (a second run finds it and only reports)."""
    with portal.db.read() as session:
        existing = session.scalar(select(func.count()).select_from(Patient)) or 0
    if existing:
        yield f"demo: {existing} patients already present; not seeding again"
        return
    started = time.perf_counter()
    resources = 0
    first_mrn = ""
    for bundle in generate_population(patients, seed=DEMO_SEED, large=large, today=date.today()):
        result = portal.records.import_bundle(bundle, actor=DEMO_ACTOR, role="system")
        resources += sum(result.counts.values())
        if not first_mrn:
            first_mrn = _mrn(bundle)
    former = generate_patient_bundle(DEMO_SEED * 1_000_000 + 999, size="small", today=FORMER_PATIENT_LAST_SEEN)
    resources += sum(portal.records.import_bundle(former, actor=DEMO_ACTOR, role="system").counts.values())
    _demo_recipients(portal)
    portal.ledger.checkpoint()
    yield (
        f"demo: imported {patients} synthetic patients and a former patient ({resources} FHIR resources, "
        f"{large} large records) in {time.perf_counter() - started:.1f} s; all demo data is synthetic"
    )
    yield from _demo_invitations(portal, first_mrn)
    yield from _former_patient_invitation(portal, _mrn(former))


def _demo_recipients(portal: Portal) -> None:
    """Downstream recipients named by the consent purposes, with example addresses, told about erasures."""
    names = {name for purpose in portal.consent.purposes() for name in purpose.recipient_list}
    for name in sorted(names):
        slug = "".join(ch for ch in name.lower() if ch.isalnum())[:30]
        portal.requests.register_recipient(name, f"privacy@{slug}.example", actor=DEMO_ACTOR)


def _demo_invitations(portal: Portal, mrn: str) -> Iterator[str]:
    """Links a newcomer opens to enrol as a patient and as privacy staff (valid 72 hours)."""
    patient = portal.accounts.invite_patient(mrn, actor=DEMO_ACTOR)
    birth_date = _birth_date(portal, mrn)
    officer = portal.accounts.create_staff(
        "officer@portal.example", "privacy_officer", "Olivia Officer (demo)", actor=DEMO_ACTOR
    )
    admin = portal.accounts.create_staff("admin@portal.example", "privacy_admin", "Adam Admin (demo)", actor=DEMO_ACTOR)
    yield f"demo patient (MRN {mrn}, date of birth {birth_date}): {patient}"
    yield f"demo privacy officer: {officer}"
    yield f"demo privacy admin:   {admin}"
    yield "open a link, confirm the date of birth (patients only), and create a passkey"


def _former_patient_invitation(portal: Portal, mrn: str) -> Iterator[str]:
    """A patient last treated long ago: their retention periods are over, so an erasure really erases."""
    link = portal.accounts.invite_patient(mrn, actor=DEMO_ACTOR)
    yield (
        f"demo former patient (MRN {mrn}, date of birth {_birth_date(portal, mrn)}; last treated "
        f"{FORMER_PATIENT_LAST_SEEN.year}, so an erasure removes their record): {link}"
    )


def _birth_date(portal: Portal, mrn: str) -> str:
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    resource = portal.records.patient_resource(patient_id, actor=DEMO_ACTOR, purpose="PATADMIN", role="system")
    return str((resource or {}).get("birthDate", "unknown"))


def _mrn(bundle: dict[str, object]) -> str:
    entries = bundle.get("entry")
    assert isinstance(entries, list)
    patient = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")
    return str(patient["identifier"][0]["value"])
