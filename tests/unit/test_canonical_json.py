"""The ledger's canonical JSON (msgspec) writes the bytes the standard library's canonical form gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from portal.audit.ledger import canonical_json

# What ledger entries and most payloads hold: text (any code point JSON can carry), integers,
# booleans, null, and lists and objects of them.
_text = st.text(st.characters(exclude_categories=["Cs"]))
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | _text
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=12
)


def _stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@given(st.dictionaries(_text, _values, max_size=8))
def test_the_bytes_are_those_of_sorted_compact_utf8_json(document: dict[str, Any]) -> None:
    assert canonical_json(document) == _stdlib_canonical(document)


def test_control_characters_and_line_separators_are_escaped_the_same_way() -> None:
    document = {"k\u2028": '\x00\x1f\x7f\u2029"\\\n\t\b\f\r', "é": ["\U0001f600"]}
    assert canonical_json(document) == _stdlib_canonical(document)
