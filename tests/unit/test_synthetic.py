"""The synthetic FHIR generator against fhir.resources' R4B models (FHIR 4.3, R4-compatible).

fhir.resources checks structure, cardinality, required elements, choice types ([x]) and primitive
formats (dateTime/instant time zones, base64, ids), but not value-set bindings, so the codes with a
required binding are checked here by hand.
"""

from __future__ import annotations

import ast
import base64
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.records import synthetic
from portal.records.synthetic import (
    MRN_SYSTEM,
    RESOURCE_TYPES,
    SIZE_RANGES,
    SYNTHETIC_TAG,
    generate_patient_bundle,
    generate_population,
)

TODAY = date(2025, 6, 30)
JSON = dict[str, Any]

# Codes with a *required* binding that fhir.resources does not check.
REQUIRED_CODES: dict[tuple[str, str], set[str]] = {
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
    ("Encounter", "status"): {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
    },
    ("Observation", "status"): {"registered", "preliminary", "final", "amended"},
    ("DiagnosticReport", "status"): {"registered", "partial", "preliminary", "final"},
    ("MedicationRequest", "status"): {"active", "on-hold", "cancelled", "completed", "stopped", "draft"},
    ("MedicationRequest", "intent"): {"proposal", "plan", "order", "original-order"},
    ("Immunization", "status"): {"completed", "entered-in-error", "not-done"},
    ("Procedure", "status"): {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed"},
    ("AllergyIntolerance", "type"): {"allergy", "intolerance"},
    ("AllergyIntolerance", "criticality"): {"low", "high", "unable-to-assess"},
    ("DocumentReference", "status"): {"current", "superseded", "entered-in-error"},
    ("Coverage", "status"): {"active", "cancelled", "draft", "entered-in-error"},
}


@pytest.fixture(scope="module")
def small() -> JSON:
    return generate_patient_bundle(11, size="small", today=TODAY)


@pytest.fixture(scope="module")
def typical() -> JSON:
    return generate_patient_bundle(7, today=TODAY)


@pytest.fixture(scope="module")
def large() -> JSON:
    return generate_patient_bundle(123, size="large", today=TODAY)


def resources(bundle: JSON) -> list[JSON]:
    return [entry["resource"] for entry in bundle["entry"]]


def validate(resource: JSON) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def invalid_resources(items: list[JSON]) -> list[str]:
    problems = []
    for resource in items:
        try:
            validate(resource)
        except Exception as exc:
            problems.append(f"{resource['resourceType']}/{resource['id']}: {exc}")
    return problems


def walk(node: Any) -> Iterator[JSON]:
    """Every dict inside a JSON tree."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def references(bundle: JSON) -> list[str]:
    return [node["reference"] for node in walk(resources(bundle)) if "reference" in node]


def stratified_sample(items: list[JSON], total: int, seed: int = 0) -> list[JSON]:
    """About ``total`` resources with every resource type represented."""
    by_type: dict[str, list[JSON]] = defaultdict(list)
    for resource in items:
        by_type[resource["resourceType"]].append(resource)
    rng = random.Random(seed)
    share = max(total // len(by_type), 1)
    return [r for group in by_type.values() for r in rng.sample(group, min(share, len(group)))]


# --- FHIR validity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "typical"])
def test_every_resource_validates(name: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(name)
    assert invalid_resources(resources(bundle)) == []


@pytest.mark.parametrize("name", ["small", "typical"])
def test_whole_bundle_validates(name: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(name)
    model = get_fhir_model_class("Bundle").model_validate(bundle)
    # Round trip is exact: nothing dropped, renamed or reformatted by the model.
    assert json.loads(model.model_dump_json()) == bundle


def test_large_bundle_has_thousands_of_entries_and_a_valid_sample(large: JSON) -> None:
    assert len(large["entry"]) >= 5_000
    sample = stratified_sample(resources(large), 300)
    assert {r["resourceType"] for r in sample} == set(RESOURCE_TYPES)
    assert invalid_resources(sample) == []
    envelope = {**large, "entry": large["entry"][:25]}
    get_fhir_model_class("Bundle").model_validate(envelope)


def test_transaction_bundle_validates_and_posts_every_entry() -> None:
    bundle = generate_patient_bundle(7, size="small", bundle_type="transaction", today=TODAY)
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["url"] == entry["resource"]["resourceType"]
    patient_request = bundle["entry"][0]["request"]
    assert patient_request["ifNoneExist"] == f"identifier={MRN_SYSTEM}|MRN-000007"


@pytest.mark.parametrize("name", ["small", "typical", "large"])
def test_required_binding_codes_are_legal(name: str, request: pytest.FixtureRequest) -> None:
    for resource in resources(request.getfixturevalue(name)):
        for (resource_type, element), allowed in REQUIRED_CODES.items():
            if resource["resourceType"] == resource_type and element in resource:
                assert resource[element] in allowed, (resource_type, element, resource[element])


# --- Bundle structure ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "typical", "large"])
def test_all_references_resolve_inside_the_bundle(name: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(name)
    full_urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", url) for url in full_urls)
    assert all(entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}" for entry in bundle["entry"])
    refs = references(bundle)
    assert refs, "a bundle without references proves nothing"
    assert set(refs) <= set(full_urls)


def test_references_only_point_backwards(typical: JSON) -> None:
    """Why any prefix of the entries (an exact ``size=int``) is self-contained."""
    seen: set[str] = set()
    for entry in typical["entry"]:
        for node in walk(entry["resource"]):
            if "reference" in node:
                assert node["reference"] in seen
        seen.add(entry["fullUrl"])


def test_diagnostic_reports_point_at_observations(typical: JSON) -> None:
    by_url = {entry["fullUrl"]: entry["resource"] for entry in typical["entry"]}
    reports = [r for r in resources(typical) if r["resourceType"] == "DiagnosticReport"]
    assert reports
    for report in reports:
        assert report["result"]
        assert {by_url[ref["reference"]]["resourceType"] for ref in report["result"]} == {"Observation"}


@pytest.mark.parametrize("target", [1, 2, 3, 37, 250])
def test_int_size_is_an_exact_count_and_still_self_contained(target: int) -> None:
    bundle = generate_patient_bundle(3, size=target, today=TODAY)
    assert len(bundle["entry"]) == target
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"
    assert set(references(bundle)) <= {entry["fullUrl"] for entry in bundle["entry"]}


@pytest.mark.parametrize("size", ["small", "typical"])
def test_named_sizes_stay_in_range(size: str) -> None:
    low, high = SIZE_RANGES[size]
    for seed in range(5):
        assert low <= len(generate_patient_bundle(seed, size=size, today=TODAY)["entry"]) <= high


def test_large_bundle_has_every_resource_type_and_years_of_labs(large: JSON) -> None:
    items = resources(large)
    assert {r["resourceType"] for r in items} == set(RESOURCE_TYPES)
    lab_years = {
        r["effectiveDateTime"][:4]
        for r in items
        if r["resourceType"] == "Observation" and r["category"][0]["coding"][0]["code"] == "laboratory"
    }
    assert len(lab_years) >= 10


@pytest.mark.parametrize("bad", ["huge", "", 0, -5])
def test_bad_size_is_rejected(bad: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        generate_patient_bundle(1, size=bad, today=TODAY)


# --- Determinism -----------------------------------------------------------------------------


def canonical(bundle: JSON) -> str:
    return json.dumps(bundle, sort_keys=True)


def test_same_seed_and_day_give_identical_json(typical: JSON) -> None:
    assert canonical(generate_patient_bundle(7, today=TODAY)) == canonical(typical)


def test_different_seed_or_day_gives_different_json(typical: JSON) -> None:
    assert canonical(generate_patient_bundle(8, today=TODAY)) != canonical(typical)
    assert canonical(generate_patient_bundle(7, today=date(2025, 7, 1))) != canonical(typical)


def test_global_random_state_is_neither_used_nor_disturbed() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    first = canonical(generate_patient_bundle(5, size="small", today=TODAY))
    assert random.random() == expected
    random.seed(12345)
    assert canonical(generate_patient_bundle(5, size="small", today=TODAY)) == first


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=-(2**40), max_value=2**40), target=st.integers(min_value=1, max_value=80))
def test_any_seed_gives_a_closed_tagged_bundle(seed: int, target: int) -> None:
    bundle = generate_patient_bundle(seed, size=target, today=TODAY)
    assert len(bundle["entry"]) == target
    assert set(references(bundle)) <= {entry["fullUrl"] for entry in bundle["entry"]}
    assert all(SYNTHETIC_TAG in r["meta"]["tag"] for r in resources(bundle))
    assert canonical(generate_patient_bundle(seed, size=target, today=TODAY)) == canonical(bundle)


# --- Obviously synthetic ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "typical", "large"])
def test_every_resource_carries_the_synthetic_tag(name: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(name)
    assert SYNTHETIC_TAG in bundle["meta"]["tag"]
    for resource in resources(bundle):
        assert SYNTHETIC_TAG in resource["meta"]["tag"], resource["resourceType"]


def test_patient_has_mrn_and_fictional_contact_details(typical: JSON) -> None:
    patient = typical["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient"
    mrns = [i for i in patient["identifier"] if i["system"] == MRN_SYSTEM]
    assert [i["value"] for i in mrns] == ["MRN-000007"]
    assert mrns[0]["type"]["coding"][0]["code"] == "MR"
    phones = [t["value"] for t in patient["telecom"] if t["system"] == "phone"]
    emails = [t["value"] for t in patient["telecom"] if t["system"] == "email"]
    assert phones and all(re.fullmatch(r"\(555\) 555-01\d\d", p) for p in phones)
    assert emails and all(e.endswith("@example.org") for e in emails)
    assert patient["address"][0]["city"] == "Synthville"
    assert patient["communication"][0]["language"]["coding"][0]["system"] == "urn:ietf:bcp:47"


def test_coverage_payor_is_a_fictional_insurer(typical: JSON) -> None:
    [coverage] = [r for r in resources(typical) if r["resourceType"] == "Coverage"]
    assert coverage["payor"][0]["display"].endswith("(fictional)")


def test_clinical_notes_are_short_synthetic_text(typical: JSON) -> None:
    notes = [r for r in resources(typical) if r["resourceType"] == "DocumentReference"]
    assert notes
    for note in notes:
        text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
        assert text.startswith("SYNTHETIC RECORD")
        assert len(text) < 1_000


def test_codes_use_the_expected_systems(large: JSON) -> None:
    systems = {
        "Observation": "http://loinc.org",
        "DiagnosticReport": "http://loinc.org",
        "Condition": "http://snomed.info/sct",
        "Procedure": "http://snomed.info/sct",
    }
    for resource in resources(large):
        expected = systems.get(resource["resourceType"])
        if expected:
            assert resource["code"]["coding"][0]["system"] == expected
        if resource["resourceType"] == "MedicationRequest":
            coding = resource["medicationCodeableConcept"]["coding"][0]
            assert coding["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
        if resource["resourceType"] == "Immunization":
            assert resource["vaccineCode"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx"
        for node in walk(resource):
            if "valueQuantity" in node:
                assert node["valueQuantity"]["system"] == "http://unitsofmeasure.org"


def test_dates_fall_within_fifteen_years_before_today(large: JSON) -> None:
    starts = [
        datetime.fromisoformat(r["period"]["start"]).date()
        for r in resources(large)
        if r["resourceType"] == "Encounter"
    ]
    assert min(starts) >= date(2010, 6, 30)
    assert max(starts) < TODAY
    assert max(starts).year - min(starts).year >= 12
    assert starts == sorted(starts)


# --- Population and packaging ----------------------------------------------------------------


def test_population_mixes_sizes_with_unique_mrns() -> None:
    bundles = list(generate_population(6, seed=3, large=1, today=TODAY))
    assert len(bundles) == 6
    counts = sorted(len(b["entry"]) for b in bundles)
    assert counts[-1] >= 5_000
    assert all(SIZE_RANGES["small"][0] <= n <= SIZE_RANGES["typical"][1] for n in counts[:-1])
    mrns = {b["entry"][0]["resource"]["identifier"][0]["value"] for b in bundles}
    assert len(mrns) == 6


def test_population_is_lazy_and_reproducible() -> None:
    population = generate_population(3, seed=1, large=0, today=TODAY)
    assert isinstance(population, Iterator)
    first = next(population)
    again = next(generate_population(3, seed=1, large=0, today=TODAY))
    assert canonical(first) == canonical(again)


def test_runtime_module_does_not_import_fhir_resources() -> None:
    tree = ast.parse(Path(synthetic.__file__).read_text(encoding="utf-8"))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("fhir")]
