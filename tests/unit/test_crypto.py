"""Unit tests for portal.security.crypto (field encryption, key wrap, KEK files, blind index)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.security.crypto import (
    CryptoError,
    DecryptionError,
    EnvKekProvider,
    FieldContext,
    FileKekProvider,
    InsecureKeyFileError,
    KekRing,
    KekStoreError,
    KeyUnwrapError,
    UnknownKekError,
    _normalize_identifier,
    blind_index,
    decrypt_field,
    derive_subkey,
    encrypt_field,
    generate_data_key,
    generate_signing_key,
    open_signing_key,
    public_key_fingerprint,
    seal_signing_key,
    unwrap_key,
    wrap_key,
)

CTX = FieldContext(patient_id="pat-1", table="patients", column="name", row_id="row-1", key_version=1)
FIXED_KEY = bytes(range(32))
ZERO_B64 = base64.b64encode(bytes(32)).decode()

ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
contexts = st.builds(
    FieldContext,
    patient_id=ids,
    table=ids,
    column=ids,
    row_id=ids,
    key_version=st.integers(min_value=0, max_value=2**63 - 1),
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dek() -> bytes:
    return generate_data_key()


# --------------------------------------------------------------------------- FieldContext.aad


def test_aad_encoding_is_pinned() -> None:
    # Pinned because changing the encoding makes every stored ciphertext unreadable.
    expected = (
        b"portal/field-aad/v1\x00"
        + b"\x00\x00\x00\x05pat-1"
        + b"\x00\x00\x00\x08patients"
        + b"\x00\x00\x00\x04name"
        + b"\x00\x00\x00\x05row-1"
        + (1).to_bytes(8, "big")
    )
    assert CTX.aad() == expected


def test_aad_shifting_boundaries_between_fields_changes_bytes() -> None:
    a = FieldContext("ab", "c", "d", "e", 1)
    b = FieldContext("a", "bc", "d", "e", 1)
    c = FieldContext("a", "b", "cd", "e", 1)
    assert len({a.aad(), b.aad(), c.aad()}) == 3


@settings(max_examples=300)
@given(contexts, contexts)
def test_aad_is_injective(a: FieldContext, b: FieldContext) -> None:
    assert (a.aad() == b.aad()) == (a == b)


@pytest.mark.parametrize("field", ["patient_id", "table", "column", "row_id"])
def test_context_rejects_empty_strings(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CTX, **cast(dict[str, Any], {field: ""}))


@pytest.mark.parametrize("version", [-1, 2**63])
def test_context_rejects_out_of_range_key_version(version: int) -> None:
    with pytest.raises(ValueError, match="key_version"):
        dataclasses.replace(CTX, key_version=version)


def test_context_rejects_bool_key_version() -> None:
    with pytest.raises(TypeError, match="key_version"):
        dataclasses.replace(CTX, key_version=True)


def test_context_rejects_unencodable_string() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CTX, row_id="\ud800")


# --------------------------------------------------------------------------- field encryption


@pytest.mark.parametrize("plaintext", [b"", b"Jane Doe", bytes(range(256)) * 64])
def test_round_trip(dek: bytes, plaintext: bytes) -> None:
    assert decrypt_field(dek, encrypt_field(dek, plaintext, CTX), CTX) == plaintext


@settings(max_examples=100)
@given(plaintext=st.binary(max_size=512), ctx=contexts)
def test_round_trip_property(plaintext: bytes, ctx: FieldContext) -> None:
    assert decrypt_field(FIXED_KEY, encrypt_field(FIXED_KEY, plaintext, ctx), ctx) == plaintext


def test_known_blob_still_decrypts() -> None:
    # A blob produced by this format version; it must stay readable forever.
    blob = bytes.fromhex("01cceb77925f5b1df83328b27b7debbcac5331a5ad941106cc9ecb1d2285cdca5de3b75e20")
    assert decrypt_field(FIXED_KEY, blob, CTX) == b"Jane Doe"


def test_blob_layout(dek: bytes) -> None:
    blob = encrypt_field(dek, b"hello", CTX)
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + len(b"hello") + 16


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("patient_id", "pat-2"),
        ("table", "contacts"),
        ("column", "address"),
        ("row_id", "row-2"),
        ("key_version", 2),
    ],
)
def test_ciphertext_moved_to_other_context_fails(dek: bytes, field: str, other: object) -> None:
    blob = encrypt_field(dek, b"Jane Doe", CTX)
    moved = dataclasses.replace(CTX, **cast(dict[str, Any], {field: other}))
    with pytest.raises(DecryptionError):
        decrypt_field(dek, blob, moved)


def test_tampering_any_bit_of_any_byte_fails(dek: bytes) -> None:
    blob = encrypt_field(dek, b"secret diagnosis", CTX)
    for i in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(DecryptionError):
                decrypt_field(dek, bytes(tampered), CTX)


def test_every_truncation_fails(dek: bytes) -> None:
    blob = encrypt_field(dek, b"secret", CTX)
    for n in range(len(blob)):
        with pytest.raises(DecryptionError):
            decrypt_field(dek, blob[:n], CTX)


def test_appended_bytes_fail(dek: bytes) -> None:
    blob = encrypt_field(dek, b"secret", CTX)
    with pytest.raises(DecryptionError):
        decrypt_field(dek, blob + b"\x00", CTX)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_format_version_fails(dek: bytes, version: int) -> None:
    blob = encrypt_field(dek, b"secret", CTX)
    with pytest.raises(DecryptionError, match="version"):
        decrypt_field(dek, bytes([version]) + blob[1:], CTX)


def test_wrong_dek_fails(dek: bytes) -> None:
    blob = encrypt_field(dek, b"secret", CTX)
    with pytest.raises(DecryptionError):
        decrypt_field(generate_data_key(), blob, CTX)


def test_decryption_error_hides_library_exception(dek: bytes) -> None:
    blob = encrypt_field(dek, b"secret", CTX)
    with pytest.raises(DecryptionError) as info:
        decrypt_field(generate_data_key(), blob, CTX)
    assert not isinstance(info.value, InvalidTag)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert isinstance(info.value, CryptoError)


def test_nonces_are_unique(dek: bytes) -> None:
    blobs = [encrypt_field(dek, b"same plaintext", CTX) for _ in range(10_000)]
    assert len({b[1:13] for b in blobs}) == len(blobs)
    assert len(set(blobs)) == len(blobs)


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_bad_dek_size_is_value_error(size: int) -> None:
    bad = b"k" * size
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_field(bad, b"x", CTX)
    with pytest.raises(ValueError, match="32 bytes"):
        decrypt_field(bad, b"\x01" + b"\x00" * 40, CTX)


def test_non_bytes_dek_is_type_error() -> None:
    with pytest.raises(TypeError):
        encrypt_field("k" * 32, b"x", CTX)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DEKs and key wrap


def test_generate_data_key() -> None:
    keys = {generate_data_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) == 32 for k in keys)


def test_wrap_matches_rfc3394_vector() -> None:
    # RFC 3394 section 4.6: 256-bit key data with a 256-bit KEK.
    key_data = bytes.fromhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f")
    expected = bytes.fromhex("28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21")
    assert wrap_key(FIXED_KEY, key_data) == expected
    assert unwrap_key(FIXED_KEY, expected) == key_data


def test_wrap_unwrap_round_trip(dek: bytes) -> None:
    kek = generate_data_key()
    wrapped = wrap_key(kek, dek)
    assert len(wrapped) == 40
    assert dek not in wrapped
    assert unwrap_key(kek, wrapped) == dek


def test_unwrap_with_wrong_kek_fails(dek: bytes) -> None:
    wrapped = wrap_key(generate_data_key(), dek)
    with pytest.raises(KeyUnwrapError) as info:
        unwrap_key(generate_data_key(), wrapped)
    assert info.value.__cause__ is None


def test_unwrap_tampered_or_truncated_fails(dek: bytes) -> None:
    kek = generate_data_key()
    wrapped = wrap_key(kek, dek)
    for i in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[i] ^= 0x01
        with pytest.raises(KeyUnwrapError):
            unwrap_key(kek, bytes(tampered))
    for n in (0, 8, 24, 39):
        with pytest.raises(KeyUnwrapError):
            unwrap_key(kek, wrapped[:n])


def test_wrap_rejects_bad_key_sizes(dek: bytes) -> None:
    with pytest.raises(ValueError, match="kek"):
        wrap_key(b"k" * 16, dek)
    with pytest.raises(ValueError, match="dek"):
        wrap_key(generate_data_key(), b"d" * 16)
    with pytest.raises(ValueError, match="kek"):
        unwrap_key(b"k" * 16, b"w" * 40)


# --------------------------------------------------------------------------- KekRing


def test_ring_repr_hides_key_material() -> None:
    ring = KekRing({"k1": FIXED_KEY}, "k1")
    text = repr(ring)
    assert "k1" in text
    assert FIXED_KEY.hex() not in text
    assert base64.b64encode(FIXED_KEY).decode() not in text
    assert str(FIXED_KEY) not in text


def test_ring_json_round_trip() -> None:
    ring = KekRing({"k1": FIXED_KEY, "k2": bytes(32)}, "k2")
    doc = json.loads(ring.to_json())
    assert doc == {
        "version": 1,
        "current": "k2",
        "keys": {"k1": base64.b64encode(FIXED_KEY).decode(), "k2": base64.b64encode(bytes(32)).decode()},
    }
    again = KekRing.from_json(ring.to_json())
    assert again.current_id == "k2"
    assert again.ids == ("k1", "k2")
    assert again.get("k1") == FIXED_KEY


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        '{"version": 1, "current": "k1"}',
        f'{{"version": 2, "current": "k1", "keys": {{"k1": "{ZERO_B64}"}}}}',
        f'{{"version": 1, "current": "k9", "keys": {{"k1": "{ZERO_B64}"}}}}',
        f'{{"version": 1, "current": "k1", "keys": {{"k1": "{ZERO_B64}"}}, "extra": 1}}',
        '{"version": 1, "current": "k1", "keys": {"k1": "AAAA"}}',
        '{"version": 1, "current": "k1", "keys": {"k1": "not base64!"}}',
        '{"version": 1, "current": "k1", "keys": {"k1": 7}}',
        '{"version": 1, "current": "k1", "keys": {}}',
    ],
)
def test_ring_rejects_malformed_documents(document: str) -> None:
    with pytest.raises(KekStoreError):
        KekRing.from_json(document)


def test_ring_rejects_bad_ids_and_keys() -> None:
    with pytest.raises(ValueError, match="KEK id"):
        KekRing({"bad id": FIXED_KEY}, "bad id")
    with pytest.raises(ValueError, match="32 bytes"):
        KekRing({"k1": b"short"}, "k1")
    with pytest.raises(ValueError, match="current"):
        KekRing({"k1": FIXED_KEY}, "k2")


def test_ring_unknown_id(dek: bytes) -> None:
    ring = KekRing({"k1": FIXED_KEY}, "k1")
    with pytest.raises(UnknownKekError, match="k2"):
        ring.get("k2")
    with pytest.raises(UnknownKekError):
        ring.unwrap("k2", wrap_key(FIXED_KEY, dek))


# --------------------------------------------------------------------------- FileKekProvider


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "kek.json"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # The most permissive umask: proves file/dir modes don't rely on it.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_zero")
def test_kek_file_created_0600_in_0700_dir(kek_path: Path) -> None:
    ring = FileKekProvider(kek_path).load()
    assert mode_of(kek_path) == 0o600
    assert mode_of(kek_path.parent) == 0o700
    doc = json.loads(kek_path.read_text())
    assert doc["current"] == ring.current_id
    assert base64.b64decode(doc["keys"][ring.current_id]) == ring.current_key
    # No temp files left behind.
    assert sorted(p.name for p in kek_path.parent.iterdir()) == ["kek.json"]


def test_kek_file_is_stable_across_loads(kek_path: Path, dek: bytes) -> None:
    kek_id, wrapped = FileKekProvider(kek_path).load().wrap(dek)
    assert FileKekProvider(kek_path).load().unwrap(kek_id, wrapped) == dek


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_kek_file_refused_when_accessible_to_others(kek_path: Path, mode: int) -> None:
    FileKekProvider(kek_path).load()
    kek_path.chmod(mode)
    with pytest.raises(InsecureKeyFileError) as info:
        FileKekProvider(kek_path).load()
    message = str(info.value)
    assert str(kek_path) in message
    assert f"{mode:04o}" in message


def test_kek_file_refused_in_group_writable_dir(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o770)
    with pytest.raises(InsecureKeyFileError, match="0770"):
        FileKekProvider(directory / "kek.json").load()
    assert not (directory / "kek.json").exists()


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    FileKekProvider(tmp_path / "kek.json").load()
    assert mode_of(tmp_path) == 0o750
    assert mode_of(tmp_path / "kek.json") == 0o600


def test_corrupt_kek_file_is_refused_with_path(kek_path: Path) -> None:
    FileKekProvider(kek_path).load()
    kek_path.write_text("{}")
    with pytest.raises(KekStoreError, match=str(kek_path)):
        FileKekProvider(kek_path).load()


@pytest.mark.usefixtures("umask_zero")
def test_rotation_keeps_old_wraps_readable_and_uses_new_id(kek_path: Path, dek: bytes) -> None:
    provider = FileKekProvider(kek_path)
    old_ring = provider.load()
    old_id, old_wrapped = old_ring.wrap(dek)

    new_ring = provider.rotate()
    assert new_ring.current_id != old_id
    assert new_ring.ids == (old_id, new_ring.current_id)

    reloaded = FileKekProvider(kek_path).load()
    assert reloaded.current_id == new_ring.current_id
    assert reloaded.unwrap(old_id, old_wrapped) == dek
    new_id, new_wrapped = reloaded.wrap(dek)
    assert new_id == new_ring.current_id
    assert reloaded.unwrap(new_id, new_wrapped) == dek
    with pytest.raises(KeyUnwrapError):
        reloaded.unwrap(old_id, new_wrapped)

    assert mode_of(kek_path) == 0o600
    assert not [p for p in kek_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_retire_removes_old_kek(kek_path: Path, dek: bytes) -> None:
    provider = FileKekProvider(kek_path)
    old_id, wrapped = provider.load().wrap(dek)
    new_id = provider.rotate().current_id

    # Re-wrap under the new KEK before retiring, as the runbook requires.
    rewrapped = provider.load().unwrap(old_id, wrapped)
    _, new_wrapped = provider.load().wrap(rewrapped)

    ring = provider.retire(old_id)
    assert ring.ids == (new_id,)
    reloaded = FileKekProvider(kek_path).load()
    assert reloaded.ids == (new_id,)
    assert reloaded.unwrap(new_id, new_wrapped) == dek
    with pytest.raises(UnknownKekError):
        reloaded.unwrap(old_id, wrapped)


def test_retire_refuses_current_or_unknown(kek_path: Path) -> None:
    provider = FileKekProvider(kek_path)
    current = provider.load().current_id
    with pytest.raises(KekStoreError, match="current"):
        provider.retire(current)
    with pytest.raises(UnknownKekError):
        provider.retire("nope")
    assert FileKekProvider(kek_path).load().ids == (current,)


def test_losing_a_creation_race_keeps_the_winners_keys(kek_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    winner = FileKekProvider(kek_path).load()
    real_read = FileKekProvider._read
    calls = 0

    def read_as_if_missing(self: FileKekProvider) -> KekRing:
        # First read behaves as if the other process had not created the file yet.
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FileNotFoundError(kek_path)
        return real_read(self)

    monkeypatch.setattr(FileKekProvider, "_read", read_as_if_missing)
    loser = FileKekProvider(kek_path).load()
    assert loser.to_json() == winner.to_json()
    assert sorted(p.name for p in kek_path.parent.iterdir()) == ["kek.json"]


def test_concurrent_rotations_lose_no_key(kek_path: Path) -> None:
    first = FileKekProvider(kek_path).load()
    with ThreadPoolExecutor(max_workers=8) as pool:
        rings = list(pool.map(lambda _: FileKekProvider(kek_path).rotate(), range(8)))
    final = FileKekProvider(kek_path).load()
    assert set(final.ids) == {first.current_id} | {r.current_id for r in rings}
    assert len(final.ids) == 9


# --------------------------------------------------------------------------- EnvKekProvider


def test_env_provider_reads_json_and_base64() -> None:
    ring = KekRing({"k1": FIXED_KEY, "k2": bytes(32)}, "k2")
    document = ring.to_json()
    encoded = base64.b64encode(document.encode()).decode()
    for value in (document, encoded, f"  {encoded}\n"):
        loaded = EnvKekProvider(value).load()
        assert loaded.current_id == "k2"
        assert loaded.get("k1") == FIXED_KEY


def test_env_provider_reads_file_provider_document(kek_path: Path, dek: bytes) -> None:
    kek_id, wrapped = FileKekProvider(kek_path).load().wrap(dek)
    assert EnvKekProvider(kek_path.read_text()).load().unwrap(kek_id, wrapped) == dek


def test_env_provider_is_read_only() -> None:
    provider = EnvKekProvider(KekRing.generate().to_json())
    with pytest.raises(KekStoreError, match="secret manager"):
        provider.rotate()
    with pytest.raises(KekStoreError, match="secret manager"):
        provider.retire("k1")


def test_env_provider_errors_do_not_echo_value() -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbA-not-valid"
    with pytest.raises(KekStoreError) as info:
        EnvKekProvider(secret)
    assert secret not in str(info.value)
    assert info.value.__cause__ is None


# --------------------------------------------------------------------------- blind index


def test_blind_index_is_pinned() -> None:
    # Pinned: changing the construction would orphan every stored index.
    assert blind_index(FIXED_KEY, "mrn", "AB 123") == "93ab9b07deaba5984ee9af366b58b2160f5c83c7a836ab016f390a9c3809ff80"


def test_blind_index_is_stable_hex() -> None:
    first = blind_index(FIXED_KEY, "mrn", "123456")
    assert first == blind_index(FIXED_KEY, "mrn", "123456")
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert first == first.lower()


@pytest.mark.parametrize(
    "variant",
    ["ab123", "AB123", "  ab123  ", "ab 123", "a b\t1 2\n3", "Ab\u00a0123", "\uff21\uff22\uff11\uff12\uff13"],
)
def test_blind_index_normalizes(variant: str) -> None:
    assert blind_index(FIXED_KEY, "mrn", variant) == blind_index(FIXED_KEY, "mrn", "AB123")


def test_blind_index_keeps_punctuation() -> None:
    assert blind_index(FIXED_KEY, "mrn", "12-34") != blind_index(FIXED_KEY, "mrn", "1234")


def test_blind_index_is_namespace_and_key_separated() -> None:
    base = blind_index(FIXED_KEY, "mrn", "123456")
    assert blind_index(FIXED_KEY, "insurance-number", "123456") != base
    assert blind_index(generate_data_key(), "mrn", "123456") != base


def test_blind_index_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        blind_index(FIXED_KEY, "mrn", " \t ")
    with pytest.raises(ValueError, match="namespace"):
        blind_index(FIXED_KEY, "MRN", "123")
    with pytest.raises(ValueError, match="namespace"):
        blind_index(FIXED_KEY, "", "123")
    with pytest.raises(ValueError, match="32 bytes"):
        blind_index(b"short", "mrn", "123")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/", min_size=1))
def test_blind_index_ignores_case_and_whitespace_property(value: str) -> None:
    spaced = " " + " ".join(value.swapcase()) + "\t\n"
    assert blind_index(FIXED_KEY, "mrn", spaced) == blind_index(FIXED_KEY, "mrn", value)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_identifiers_normalize_as_unicode_ones_do(value: str) -> None:
    """ASCII text skips the NFKC and casefold steps, which must leave it as lower() does (control
    characters the Unicode whitespace rules treat as spaces included)."""
    full = "".join(unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold()).split())
    assert _normalize_identifier(value) == full


# --------------------------------------------------------------------------- derive_subkey


def test_derive_subkey_is_pinned_and_separated() -> None:
    key = derive_subkey(FIXED_KEY, "blind-index")
    assert key.hex() == "08fab2c97e96aef40a1c58d177826b5418f17faf082063817296cfd0b9f9a2cd"
    assert len(key) == 32
    assert derive_subkey(FIXED_KEY, "blind-index") == key
    assert derive_subkey(FIXED_KEY, "csrf") != key
    assert derive_subkey(generate_data_key(), "blind-index") != key


def test_derive_subkey_accepts_long_master_secrets() -> None:
    secret = b"x" * 64  # e.g. an encoded instance secret
    assert len(derive_subkey(secret, "csrf")) == 32
    assert derive_subkey(secret, "csrf") != derive_subkey(secret + b"y", "csrf")


def test_derive_subkey_validates_input() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        derive_subkey(b"s" * 31, "csrf")
    with pytest.raises(ValueError, match="purpose"):
        derive_subkey(FIXED_KEY, "")


# --------------------------------------------------------------------------- signing key


def test_seal_open_round_trip() -> None:
    kek = generate_data_key()
    key = generate_signing_key()
    sealed = seal_signing_key(kek, key)
    opened = open_signing_key(kek, sealed)
    assert opened.private_bytes_raw() == key.private_bytes_raw()
    signature = opened.sign(b"checkpoint")
    key.public_key().verify(signature, b"checkpoint")
    assert key.private_bytes_raw() not in sealed
    assert seal_signing_key(kek, key) != sealed  # fresh nonce each time


def test_known_sealed_signing_key_still_opens() -> None:
    sealed = bytes.fromhex(
        "01d2003ed7fa5e0f15fa0c9f9e6f19d500ba1b5bf574b36b231204910bf5595a"
        "4415f91b19300ceecd678a854ff295ee89974af7b1a846f0070522f9b4"
    )
    assert open_signing_key(FIXED_KEY, sealed).private_bytes_raw() == bytes(32)


def test_open_signing_key_wrong_kek_or_tampered_fails() -> None:
    kek = generate_data_key()
    sealed = seal_signing_key(kek, generate_signing_key())
    with pytest.raises(KeyUnwrapError):
        open_signing_key(generate_data_key(), sealed)
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x80
        with pytest.raises(KeyUnwrapError):
            open_signing_key(kek, bytes(tampered))
    with pytest.raises(KeyUnwrapError):
        open_signing_key(kek, sealed[:-1])


def test_sealed_signing_key_is_not_a_field_blob() -> None:
    kek = generate_data_key()
    sealed = seal_signing_key(kek, generate_signing_key())
    with pytest.raises(DecryptionError):
        decrypt_field(kek, sealed, CTX)


def test_fingerprint_is_deterministic_and_grouped() -> None:
    key = Ed25519PrivateKey.from_private_bytes(FIXED_KEY)
    pub = key.public_key()
    fingerprint = public_key_fingerprint(pub)
    assert fingerprint == public_key_fingerprint(Ed25519PrivateKey.from_private_bytes(FIXED_KEY).public_key())
    groups = fingerprint.split(" ")
    assert len(groups) == 16
    assert all(len(g) == 4 for g in groups)
    assert fingerprint.replace(" ", "") == hashlib.sha256(pub.public_bytes_raw()).hexdigest()
    assert public_key_fingerprint(generate_signing_key().public_key()) != fingerprint
