"""The record store: all-or-nothing import, blind-index look-up, encryption at rest, reads in the ledger."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from portal.container import Portal
from portal.records.models import PatientIdentifier, Resource
from portal.records.service import BundleRejectedError
from portal.records.synthetic import MRN_SYSTEM, generate_patient_bundle
from tests.support.concurrency import overlapping

TODAY = date(2026, 11, 1)
CANARY = "Zebulon-Canary-7Q"


def _bundle(seed: int = 1, size: str = "small", **kwargs: Any) -> dict[str, Any]:
    return generate_patient_bundle(seed, size=size, today=TODAY, **kwargs)


def _with_canary(bundle: dict[str, Any]) -> dict[str, Any]:
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"][0]["family"] = CANARY
    return bundle


def _mrn(bundle: dict[str, Any]) -> str:
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM))


def test_import_then_read_returns_every_resource(portal: Portal) -> None:
    bundle = _bundle(size="typical")
    result = portal.records.import_bundle(bundle, actor="system:test")
    assert result.created_patient
    assert sum(result.counts.values()) == len(bundle["entry"])
    stored = portal.records.read(result.patient_id, actor="staff:s1", role="privacy_officer", purpose="PATRQT")
    assert len(stored) == len(bundle["entry"])
    types = sorted(s.resource_type for s in stored)
    assert types == sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    for item in stored:
        assert item.resource is not None and item.resource["id"] == item.id
        for reference in _references(item.resource):
            assert not reference.startswith("urn:uuid:"), "references point at stored rows"


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_transaction_bundle_is_accepted(portal: Portal) -> None:
    result = portal.records.import_bundle(_bundle(seed=3, bundle_type="transaction"), actor="system:test")
    assert result.created_patient


def test_lookup_by_mrn_goes_through_the_blind_index(portal: Portal) -> None:
    bundle = _bundle(seed=5)
    result = portal.records.import_bundle(bundle, actor="system:test")
    mrn = _mrn(bundle)
    assert portal.records.find_by_mrn(mrn) == result.patient_id
    assert portal.records.find_by_mrn(f"  {mrn.lower()} ") == result.patient_id, "normalized"
    assert portal.records.find_by_mrn("MRN-999999") is None
    with portal.db.read() as session:
        indexes = list(session.scalars(select(PatientIdentifier.index)))
    assert all(mrn not in index for index in indexes)


def test_reimport_updates_instead_of_duplicating(portal: Portal) -> None:
    bundle = _bundle(seed=7)
    first = portal.records.import_bundle(bundle, actor="system:test")
    second = portal.records.import_bundle(copy.deepcopy(bundle), actor="system:test")
    assert second.patient_id == first.patient_id and not second.created_patient
    assert second.updated == len(bundle["entry"])
    assert sum(portal.records.counts(first.patient_id).values()) == len(bundle["entry"])


def _with_another_resource(bundle: dict[str, Any]) -> dict[str, Any]:
    grown = copy.deepcopy(bundle)
    extra = copy.deepcopy(grown["entry"][1])
    extra["resource"]["id"] = "a-resource-sent-twice"
    extra["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-00000000a5e7"
    grown["entry"].append(extra)
    return grown


@pytest.mark.pg
@pytest.mark.parametrize("backend", ["pg"])
@pytest.mark.parametrize("patient_known", [False, True], ids=["new patient", "known patient"])
def test_the_same_bundle_imported_twice_at_once_is_stored_once(portal: Portal, patient_known: bool) -> None:
    """A sender that gave up waiting sends a bundle again while the first is still being stored. The second
    finds neither the patient nor the resources the first has not committed yet, then collides with them
    once it does (a new patient's identifier, or a new resource of a known one), and must store the
    bundle again over what the first stored, not fail. (SQLite's write lock keeps the two apart.)"""
    bundle = _bundle(seed=7)
    if patient_known:
        portal.records.import_bundle(bundle, actor="system:test")
        bundle = _with_another_resource(bundle)
    first, second = overlapping(
        portal,
        lambda: portal.records.import_bundle(bundle, actor="system:test"),
        lambda: portal.records.import_bundle(copy.deepcopy(bundle), actor="system:test"),
    )
    stored, again = first.result(), second.result()
    assert again.patient_id == stored.patient_id and stored.created_patient is not patient_known
    assert not again.created_patient and again.updated == len(bundle["entry"])
    assert sum(portal.records.counts(stored.patient_id).values()) == len(bundle["entry"])
    with portal.db.read() as session:
        assert set(session.scalars(select(PatientIdentifier.patient_id))) == {stored.patient_id}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b["entry"][1]["resource"].update(meta="not an object"), "entry[1] meta"),
        (lambda b: b["entry"][0]["resource"].update(birthDate="31/12/1980"), "entry[0] birthDate"),
        (lambda b: b["entry"][2]["resource"].update(resourceType="Spaceship"), "entry[2] resourceType"),
        (
            lambda b: b["entry"].append(
                {
                    "fullUrl": "urn:uuid:x",
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": "x"},
                        "subject": {"reference": "urn:uuid:missing"},
                    },
                }
            ),
            "reference: urn:uuid:missing is not in the bundle",
        ),
        (lambda b: b["entry"].pop(0), "exactly one Patient"),
        (lambda b: b.update(type="document-ish"), "bundle type"),
    ],
)
def test_invalid_bundle_is_rejected_whole_with_located_problems(portal: Portal, mutate: Any, expected: str) -> None:
    bundle = _bundle(seed=11)
    mutate(bundle)
    with pytest.raises(BundleRejectedError) as caught:
        portal.records.import_bundle(bundle, actor="system:test")
    assert any(expected in str(problem) for problem in caught.value.problems), caught.value.problems
    with portal.db.read() as session:
        assert session.scalars(select(Resource)).first() is None, "nothing half-imported"


def test_not_a_bundle_is_rejected(portal: Portal) -> None:
    with pytest.raises(BundleRejectedError, match="not a FHIR Bundle"):
        portal.records.import_bundle({"resourceType": "Patient"}, actor="system:test")


def test_failure_midway_leaves_nothing(portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = portal.ledger.append

    def failing_append(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        raise RuntimeError("ledger unavailable")

    monkeypatch.setattr(portal.ledger, "append", failing_append)
    with pytest.raises(RuntimeError):
        portal.records.import_bundle(_bundle(seed=13), actor="system:test")
    monkeypatch.setattr(portal.ledger, "append", original)
    assert calls["n"] == 1
    with portal.db.read() as session:
        assert session.scalars(select(Resource)).first() is None
        assert session.scalars(select(PatientIdentifier)).first() is None


def test_every_read_is_in_the_ledger(portal: Portal) -> None:
    result = portal.records.import_bundle(_bundle(seed=17), actor="system:test")
    before = portal.ledger.size()
    portal.records.read(
        result.patient_id, actor="staff:officer-1", role="privacy_officer", purpose="PATRQT", categories=["clinical"]
    )
    assert portal.ledger.size() == before + 1
    entry = portal.ledger.entries_for_subject(result.patient_id, actions=["records.read"])[0]
    assert entry["actor"] == "staff:officer-1" and entry["purpose"] == "PATRQT"
    assert entry["details"]["categories"] == "clinical"
    assert CANARY not in json.dumps(entry)


def test_canary_never_appears_in_the_database_bytes(portal: Portal) -> None:
    portal.records.import_bundle(_with_canary(_bundle(seed=19)), actor="system:test")
    mrn = _mrn(_bundle(seed=19))
    if portal.db.is_sqlite:
        with portal.db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = portal.settings.database_url.removeprefix("sqlite:///")
        raw = Path(path).read_bytes()
    else:
        with portal.db.engine.connect() as conn:
            rows = conn.execute(text("SELECT body FROM resources")).scalars().all()
            raw = b"".join(bytes(r) for r in rows)
            raw += json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM ledger_entries"))]).encode()
    assert CANARY.encode() not in raw
    assert mrn.encode() not in raw


def test_ciphertext_copied_to_another_row_fails_to_decrypt(portal: Portal) -> None:
    result = portal.records.import_bundle(_bundle(seed=23), actor="system:test")
    with portal.db.write() as session:
        rows = session.scalars(select(Resource).where(Resource.category == "clinical").limit(2)).all()
        session.execute(update(Resource).where(Resource.id == rows[1].id).values(body=rows[0].body))
    from portal.security.crypto import DecryptionError

    with pytest.raises(DecryptionError):
        portal.records.read(result.patient_id, actor="system:test", purpose="TEST", categories=["clinical"])


def test_destroyed_key_reads_as_erased(portal: Portal) -> None:
    result = portal.records.import_bundle(_bundle(seed=29, size="typical"), actor="system:test")
    assert portal.keys.destroy(result.patient_id, "medications", reason="test") == 1
    stored = portal.records.read(result.patient_id, actor="system:test", purpose="TEST")
    meds = [s for s in stored if s.category == "medications"]
    others = [s for s in stored if s.category != "medications"]
    assert meds and all(s.erased for s in meds)
    assert others and not any(s.erased for s in others)
    assert portal.keys.categories_with_keys(result.patient_id)["medications"] is False


def test_kek_rotation_rewraps_and_data_stays_readable(portal: Portal) -> None:
    result = portal.records.import_bundle(_bundle(seed=31), actor="system:test")
    old = portal.keys.ring.current_id
    signing_public = portal.keys.signing_key().public_key().public_bytes_raw()
    new, count = portal.keys.rotate_kek()
    assert new != old and count >= 2
    assert portal.keys.retire_kek(old) == 0
    assert old not in portal.keys.ring.ids
    portal.keys._cache.clear()
    stored = portal.records.read(result.patient_id, actor="system:test", purpose="TEST")
    assert stored and not any(s.erased for s in stored)
    assert portal.keys.signing_key().public_key().public_bytes_raw() == signing_public
    assert portal.records.find_by_mrn(_mrn(_bundle(seed=31))) == result.patient_id


def test_current_kek_cannot_be_retired(portal: Portal) -> None:
    with pytest.raises(ValueError, match="cannot be retired"):
        portal.keys.retire_kek(portal.keys.ring.current_id)
