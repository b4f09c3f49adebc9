"""The compiled AuditEvent check passes well-formed events and never passes what fhir.resources refuses."""

from __future__ import annotations

import copy
import json
from typing import Any

import pydantic
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.access.fhir_check import audit_event_passes
from tests.support.balp import balp_event

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def fhir_accepts(resource: Any) -> bool:
    try:
        AuditEvent.model_validate(resource)
    except pydantic.ValidationError:
        return False
    return True


def _rich_event() -> dict[str, Any]:
    """A valid event using more of the model than a BALP read does: meta, extensions (nested, with a choice
    type), a period, a network address, policies, entity details, a query and a narrative."""
    event = balp_event("rich-1", "MRN-1", purpose="ETREAT", btg="trauma call")
    event["meta"] = {"versionId": "2", "lastUpdated": "2026-10-05T10:15:00.123+02:00", "profile": ["http://x/p"]}
    event["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
    event["extension"] = [
        {"url": "http://example.org/a", "valueString": "a"},
        {"url": "http://example.org/b", "extension": [{"url": "c", "valueBoolean": True}]},
        {"url": "http://example.org/d", "valuePeriod": {"start": "2026-10-05", "end": "2026-10"}},
    ]
    event["period"] = {"start": "2026-10-05T10:00:00Z", "end": "2026-10-05T10:15:00Z"}
    event["outcomeDesc"] = "fine"
    agent = event["agent"][0]
    agent["network"] = {"address": "10.0.0.1", "type": "2"}
    agent["policy"] = ["urn:oid:1.2.3", "http://example.org/policy"]
    agent["location"] = {"reference": "Location/1", "display": "Ward 4"}
    event["entity"][1]["detail"] = [{"type": "note", "valueString": "x"}, {"type": "blob", "valueBase64Binary": "aGk="}]
    event["entity"][1]["query"] = "aGVsbG8="
    event["entity"][1]["securityLabel"] = [{"system": "http://example.org", "code": "R", "userSelected": False}]
    return event


def _disclosure() -> dict[str, Any]:
    event = balp_event("d-1", "MRN-1", purpose="PUBHLTH", recorded="2026-09-01T10:00:00+14:00")
    event["type"] = {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "disclose"}
    event["agent"].append({"type": {"coding": [{"code": "IRCP"}]}, "who": {"display": "Registry"}, "requestor": False})
    return event


VALID = [
    balp_event("v-1", "MRN-1"),
    balp_event("v-2", "MRN-2", subtype="search-type", purpose="HOPERAT", recorded="2026-10-05T10:15:00.5-05:00"),
    _disclosure(),
    _rich_event(),
]

TRICKY_TEXT = [
    "",
    " ",
    "a  b",
    " a",
    "x" * 300,
    "2026-10-05T10:15:00Z",
    "2026-02-30T10:00:00Z",
    "2026-10-05T24:00:00Z",
    "2016-12-31T23:59:60Z",
    "2026-10-05T10:15:00",
    "2026-10-05",
    "2026-13",
    "2026",
    "12:00:00",
    "true",
    "1",
    "-0",
    "1e3",
    "urn:oid:1.2.3",
    "urn:oid:1.02",
    "http://example.org",
    "aGk=",
    "not base64!",
    "AuditEvent",
    "Patient",
    "bad id!",
]
KEYS = [
    "resourceType",
    "resource_type",
    "fhir_comments",
    "id",
    "_id",
    "_recorded",
    "recorded__ext",
    "contained",
    "extension",
    "modifierExtension",
    "url",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueDecimal",
    "valueDateTime",
    "valueCode",
    "valueUri",
    "valueCoding",
    "valuePeriod",
    "valueBase64Binary",
    "system",
    "code",
    "display",
    "reference",
    "identifier",
    "value",
    "start",
    "end",
    "text",
    "coding",
    "div",
    "status",
    "requestor",
    "type",
    "role",
    "who",
    "name",
    "query",
    "detail",
    "lastUpdated",
    "profile",
    "policy",
    "_policy",
    "userSelected",
    "version",
    "period",
    "use",
    "assigner",
    "purposeOfUse",
]
primitives = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(TRICKY_TEXT),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
json_values = st.recursive(
    primitives,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to an object or list in the resource (the root included)."""
    found = []
    if isinstance(value, dict | list):
        found.append(path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            found += _places(child, (*path, key))
    return found


def _at(resource: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        resource = resource[step]
    return resource


@st.composite
def variations(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to four random changes: a member removed, replaced (by any JSON value, null, or
    its own JSON text), added, or an item added to a list."""
    resource: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        container = _at(resource, draw(st.sampled_from(_places(resource))))
        if isinstance(container, dict):
            key = draw(st.one_of(st.sampled_from(sorted(container) or ["id"]), keys))
        elif container:
            key = draw(st.integers(0, len(container) - 1))
        else:
            container.append(draw(json_values))
            continue
        change = draw(st.sampled_from(["remove", "replace", "null", "json text", "append"]))
        if change == "remove" and isinstance(container, dict):
            container.pop(key, None)
        elif change == "remove":
            del container[key]
        elif change == "null":
            container[key] = None
        elif change == "json text" and isinstance(container, dict) and key in container:
            container[key] = json.dumps(container[key])
        elif change == "append" and isinstance(container, dict) and isinstance(container.get(key), list):
            container[key].append(draw(json_values))
        else:
            container[key] = draw(json_values)
    return resource


@pytest.mark.parametrize("resource", VALID, ids=["read", "search", "disclosure", "rich"])
def test_well_formed_events_pass(resource: dict[str, Any]) -> None:
    assert fhir_accepts(resource)
    assert audit_event_passes(resource)


@given(variations())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_passes_what_fhir_resources_refuses(resource: dict[str, Any]) -> None:
    if audit_event_passes(resource):
        assert fhir_accepts(resource), json.dumps(resource)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(recorded="yesterday"),
        lambda e: e.pop("agent"),
        lambda e: e["agent"][0]["who"].update(unknown=1),
        lambda e: e["entity"].append(None),
        lambda e: e.update(extension=[{"url": "u", "valueString": "a", "valueBoolean": True}]),
        lambda e: e["entity"][1].update(detail=[{"type": "note"}]),
        lambda e: e.update(id="not an id!"),
        lambda e: e["agent"][0].update(requestor="yes please"),
        lambda e: e.update(period={"start": "2026-02-30"}),
        lambda e: e.update(contained=["Patient/1"]),
    ],
)
def test_refuses_what_fhir_resources_refuses(change: Any) -> None:
    resource = balp_event("r-1", "MRN-1")
    change(resource)
    assert not fhir_accepts(resource)
    assert not audit_event_passes(resource)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(contained=[{"resourceType": "Patient", "id": "p"}]),
        lambda e: e.update(_outcome={"extension": [{"url": "u", "valueString": "x"}]}),
        lambda e: e.update(type=json.dumps(e["type"])),
        lambda e: e.update(outcomeDesc=None, resource_type="AuditEvent"),
    ],
    ids=["contained", "primitive extension", "object as JSON text", "python name"],
)
def test_leaves_to_fhir_resources_what_it_does_not_reproduce(change: Any) -> None:
    """Valid to fhir.resources, not passed here: the caller asks fhir.resources, which accepts them."""
    resource = balp_event("r-1", "MRN-1")
    change(resource)
    assert fhir_accepts(resource)
    assert not audit_event_passes(resource)
