"""Tests for portal.audit.checkpoint: C2SP tlog-checkpoint bodies and signed notes."""

from __future__ import annotations

import base64
import hashlib
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.audit import checkpoint
from portal.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    format_time_extension,
    key_id,
    parse_time_extension,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
    verify_checkpoint,
    verify_note,
)
from portal.audit.merkle import EMPTY_ROOT, leaf_hash, root_from_leaf_hashes
from tests.unit.test_merkle import top_level_imports

# ---------------------------------------------------------------------------
# Vectors from golang.org/x/mod/sumdb/note (note_test.go), the reference
# implementation that c2sp.org/signed-note was extracted from. The Go signer key
# "PRIVATE+KEY+PeterNeumann+c74f20a3+<base64(0x01 || seed)>" carries the seed.

PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_B64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
ENOCH_B64 = "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ="
PETER_SIG = f"\u2014 PeterNeumann {PETER_B64}\n".encode()
ENOCH_SIG = f"\u2014 EnochRoot {ENOCH_B64}\n".encode()

# The example body in c2sp.org/tlog-checkpoint.
SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

ROOT = root_from_leaf_hashes([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])
ORIGIN = "portal.example/audit"
WHEN = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def peter() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(PETER_SEED)


@pytest.fixture(scope="module")
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test log key").digest())


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other key").digest())


def with_time() -> Checkpoint:
    return Checkpoint(ORIGIN, 3, ROOT).with_timestamp(WHEN)


# ---------------------------------------------------------------------------
# Keys


def test_key_id_and_verifier_key_match_go_vector(peter: Ed25519PrivateKey) -> None:
    pub = peter.public_key()
    assert key_id("PeterNeumann", pub).hex() == "c74f20a3"
    raw = pub.public_bytes_raw()
    assert key_id("PeterNeumann", pub) == hashlib.sha256(b"PeterNeumann\n\x01" + raw).digest()[:4]
    assert verifier_key_string("PeterNeumann", pub) == PETER_VKEY
    name, kid, parsed = parse_verifier_key(PETER_VKEY)
    assert (name, kid.hex(), parsed.public_bytes_raw()) == ("PeterNeumann", "c74f20a3", raw)
    name, kid, _ = parse_verifier_key(ENOCH_VKEY)
    assert (name, kid.hex()) == ("EnochRoot", "af0cfe78")


def test_verifier_key_manglings_rejected() -> None:
    # Mirrors TestNewVerifier: every proper substring and every single-character bump fails.
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if i != 0 or j != len(b):
                with pytest.raises(CheckpointError):
                    parse_verifier_key(b[i:j])
    for i in range(len(b)):
        bumped = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
        with pytest.raises(CheckpointError):
            parse_verifier_key(bumped)


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", "base64"),
        (
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "unsupported signature type 0x65",
        ),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hex digits"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "whitespace"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "non-empty"),
        ("PeterNeumann+c74f20a3", "expected <name>"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10", "base64"),
        ("PeterNeumann+c74f20a3+AQ==", "0 bytes, expected 32"),
        ("PeterNeumann+c74f20a3+", "unsupported signature type missing"),
    ],
)
def test_parse_verifier_key_errors(vkey: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_verifier_key(vkey)


def test_verifier_key_hex_is_case_insensitive() -> None:
    _, kid, _ = parse_verifier_key(PETER_VKEY.replace("c74f20a3", "C74F20A3"))
    assert kid.hex() == "c74f20a3"


@pytest.mark.parametrize("name", ["", "a+b", "a b", "tab\there", "nbsp\u00a0here", "ctl\x01", "lone\ud800"])
def test_invalid_key_names_rejected(name: str, log_key: Ed25519PrivateKey) -> None:
    with pytest.raises(CheckpointError, match="key name"):
        key_id(name, log_key.public_key())
    with pytest.raises(CheckpointError, match="key name"):
        sign_note(b"text\n", name, log_key)


# ---------------------------------------------------------------------------
# Signed notes


def test_sign_note_matches_go_vector_byte_for_byte(peter: Ed25519PrivateKey) -> None:
    assert sign_note(GO_TEXT, "PeterNeumann", peter) == GO_TEXT + b"\n" + PETER_SIG


def test_verify_go_notes() -> None:
    both = GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(both, PETER_VKEY) == GO_TEXT
    assert verify_note(both, ENOCH_VKEY) == GO_TEXT
    assert verify_note(GO_TEXT + b"\n" + ENOCH_SIG, ENOCH_VKEY) == GO_TEXT
    with pytest.raises(CheckpointError, match=r"unknown key.*PeterNeumann\+c74f20a3.*EnochRoot\+af0cfe78"):
        verify_note(GO_TEXT + b"\n" + ENOCH_SIG, PETER_VKEY)


def test_go_invalid_signature_vector() -> None:
    tampered = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        verify_note(GO_TEXT + b"\n" + tampered, PETER_VKEY)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        # The badMsgs of the Go TestOpen.
        (GO_TEXT, "no blank line"),
        (GO_TEXT + b"\n", "no signature lines"),
        (GO_TEXT + b"\n" + PETER_SIG[:-1], "does not end with a newline"),
        (b"\x01" + GO_TEXT + b"\n" + PETER_SIG, "control character U\\+0001 at offset 0"),
        (b"\xff" + GO_TEXT + b"\n" + PETER_SIG, "not valid UTF-8"),
        (GO_TEXT + b"\n" + f"\u2014 Bad Name {PETER_B64}".encode(), "does not end with a newline"),
        (GO_TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n", "line 2 does not start with an em dash"),
        (GO_TEXT + b"\n" + PETER_SIG * 101, "more than 100 signature lines"),
        # More of our own.
        (GO_TEXT + b"\n" + f"\u2014 Bad Name {PETER_B64}\n".encode(), "not valid base64"),
        (GO_TEXT + b"\n" + PETER_SIG.replace("\u2014".encode(), b"--"), "does not start with an em dash"),
        (GO_TEXT + b"\n" + "\u2014 PeterNeumann\n".encode(), "has no signature"),
        (GO_TEXT + b"\n" + "\u2014 PeterNeumann \n".encode(), "has no signature"),
        (GO_TEXT + b"\n" + "\u2014 a+b AAAAAAA=\n".encode(), "contains '\\+'"),
        (GO_TEXT + b"\n" + "\u2014 PeterNeumann x08gow==\n".encode(), "too short"),
        (GO_TEXT + b"\n" + "\u2014 PeterNeumann x08go/Z\n".encode(), "not valid base64"),
        (GO_TEXT + b"\n" + "\u2014 PeterNeumann x08go/Z=\n".encode(), "not canonical base64"),
        (GO_TEXT.replace(b"\n", b"\r\n") + b"\r\n" + PETER_SIG, "control character U\\+000D"),
        ("not bytes", "must be bytes"),
    ],
)
def test_malformed_notes(note: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        verify_note(note, PETER_VKEY)


def test_wrong_length_signature_from_known_key_is_invalid() -> None:
    kid = bytes.fromhex("c74f20a3")
    line = ("\u2014 PeterNeumann " + base64.b64encode(kid + b"\x00" * 63).decode() + "\n").encode()
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_note(GO_TEXT + b"\n" + line, PETER_VKEY)


def test_every_later_signature_from_the_key_must_verify() -> None:
    # Stricter than Go, which checks only the first line per key: a second, broken
    # line from a trusted key is a sign of tampering, so reject.
    tampered = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_note(GO_TEXT + b"\n" + PETER_SIG + tampered, PETER_VKEY)
    # Exact duplicates are fine.
    assert verify_note(GO_TEXT + b"\n" + PETER_SIG + PETER_SIG, PETER_VKEY) == GO_TEXT


def test_note_text_may_contain_blank_lines(log_key: Ed25519PrivateKey) -> None:
    body = b"first\n\nthird\n\n\xe2\x80\x94 not a signature AAAA\n"
    vkey = verifier_key_string("log", log_key.public_key())
    assert verify_note(sign_note(body, "log", log_key), vkey) == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "non-empty"),
        (b"no newline", "end with a newline"),
        (b"bad\x00byte\n", "control character"),
        (b"bad\xffutf8\n", "UTF-8"),
        ("text\n", "bytes"),
    ],
)
def test_sign_note_rejects_bad_text(body: bytes, message: str, log_key: Ed25519PrivateKey) -> None:
    with pytest.raises(CheckpointError, match=message):
        sign_note(body, "log", log_key)


# ---------------------------------------------------------------------------
# Round trips and tampering


def test_checkpoint_round_trip(log_key: Ed25519PrivateKey) -> None:
    cp = with_time()
    vkey = verifier_key_string(ORIGIN, log_key.public_key())
    note = sign_checkpoint(cp, ORIGIN, log_key)
    assert note.startswith(cp.body() + b"\n\xe2\x80\x94 " + ORIGIN.encode() + b" ")
    assert verify_note(note, vkey) == cp.body()
    assert verify_checkpoint(note, vkey) == cp
    assert verify_checkpoint(note, vkey, origin=ORIGIN).timestamp == WHEN
    with pytest.raises(CheckpointError, match="not the expected"):
        verify_checkpoint(note, vkey, origin="someone.else/log")


def test_every_single_byte_change_is_rejected(log_key: Ed25519PrivateKey) -> None:
    vkey = verifier_key_string(ORIGIN, log_key.public_key())
    note = sign_checkpoint(with_time(), ORIGIN, log_key)
    for i in range(len(note)):
        for mask in (0x01, 0x20):
            bad = bytearray(note)
            bad[i] ^= mask
            with pytest.raises(CheckpointError):
                verify_note(bytes(bad), vkey)


def test_body_change_gives_invalid_signature(log_key: Ed25519PrivateKey) -> None:
    vkey = verifier_key_string(ORIGIN, log_key.public_key())
    note = sign_checkpoint(with_time(), ORIGIN, log_key)
    forged = note.replace(b"\n3\n", b"\n4\n", 1)
    with pytest.raises(CheckpointError, match=f"invalid signature for key {ORIGIN}"):
        verify_note(forged, vkey)


def test_signature_change_gives_invalid_signature(log_key: Ed25519PrivateKey) -> None:
    vkey = verifier_key_string(ORIGIN, log_key.public_key())
    note = sign_checkpoint(with_time(), ORIGIN, log_key)
    body, _, sig_line = note.rpartition(b"\n\n")
    name, _, encoded = sig_line.decode()[2:].rstrip("\n").partition(" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 0x01  # inside the Ed25519 signature, after the 4-byte key id
    forged = body + b"\n\n" + f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n".encode()
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_note(forged, vkey)


def test_other_keys_fail(log_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    cp = with_time()
    vkey = verifier_key_string(ORIGIN, log_key.public_key())
    # Signed by another key under the same name: different key id, so "unknown".
    with pytest.raises(CheckpointError, match="unknown key"):
        verify_note(sign_checkpoint(cp, ORIGIN, other_key), vkey)
    # Another name entirely.
    with pytest.raises(CheckpointError, match="unknown key"):
        verify_note(sign_checkpoint(cp, "other.example/log", log_key), vkey)
    # Forged line claiming our name and key id, signed by the other key.
    body = cp.body()
    kid = key_id(ORIGIN, log_key.public_key())
    forged_sig = base64.b64encode(kid + other_key.sign(body)).decode()
    forged = body + b"\n" + f"\u2014 {ORIGIN} {forged_sig}\n".encode()
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_note(forged, vkey)
    # Extra unknown signatures (e.g. witnesses) are ignored.
    cosigned = sign_checkpoint(cp, ORIGIN, log_key) + sign_note(body, "witness.example", other_key)[len(body) + 1 :]
    assert verify_checkpoint(cosigned, vkey) == cp
    witness_vkey = verifier_key_string("witness.example", other_key.public_key())
    assert verify_checkpoint(cosigned, witness_vkey) == cp


# ---------------------------------------------------------------------------
# Checkpoint bodies


def test_body_format() -> None:
    cp = Checkpoint(ORIGIN, 3, ROOT, ("time 2026-11-22T12:00:00Z", "x opaque"))
    expected = f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}\ntime 2026-11-22T12:00:00Z\nx opaque\n"
    assert cp.body() == expected.encode()
    assert Checkpoint.parse(cp.body()) == cp
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert empty.body() == f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n".encode()
    assert Checkpoint.parse(empty.body()) == empty


def test_parse_spec_example() -> None:
    cp = Checkpoint.parse(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.tree_size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.timestamp is None
    assert cp.body() == SPEC_BODY


def test_spec_example_note_parses_but_is_from_an_unknown_key(log_key: Ed25519PrivateKey) -> None:
    # The spec publishes no public key for its example, so only its structure can be checked.
    sig = "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8="
    note = SPEC_BODY + f"\n\u2014 example.com/behind-the-sofa {sig}\n".encode()
    vkey = verifier_key_string("example.com/behind-the-sofa", log_key.public_key())
    with pytest.raises(CheckpointError, match=r"signed by: example\.com/behind-the-sofa\+033de0ae"):
        verify_note(note, vkey)


R64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "end with a newline"),
        (f"o\n1\n{R64}".encode(), "end with a newline"),
        (b"o\n1\n", "at least 3 lines"),
        (f"\n1\n{R64}\n".encode(), "line 1 is empty"),
        (f"o\n1\n{R64}\n\n".encode(), "line 4 is empty"),
        (f"o\n1\n{R64}\n\nx\n".encode(), "line 4 is empty"),
        (f"o\n01\n{R64}\n".encode(), "leading zeros"),
        (f"o\n+1\n{R64}\n".encode(), "tree size"),
        (f"o\n 1\n{R64}\n".encode(), "tree size"),
        (f"o\n1_0\n{R64}\n".encode(), "tree size"),
        (f"o\n-1\n{R64}\n".encode(), "tree size"),
        (f"o\n\u0661\n{R64}\n".encode(), "tree size"),
        (f"o\n{2**64}\n{R64}\n".encode(), "tree size"),
        (f"o\n{'9' * 30}\n{R64}\n".encode(), "tree size"),
        (b"o\n1\nnot base64!\n", "not valid base64"),
        (f"o\n1\n{R64.rstrip('=')}\n".encode(), "not valid base64"),
        (b"o\n1\nAAAA\n", "root hash is 3 bytes"),
        (f"o\n1\n{R64[:-2]}B=\n".encode(), "not canonical base64"),
        (f"o\r\n1\n{R64}\n".encode(), "control character U\\+000D"),
        (f"o\n1\n{R64}\n\tx\n".encode(), "control character U\\+0009"),
        (b"\xc3(\n1\nAAAA\n", "not valid UTF-8"),
        (f"o\n1\n{R64}\ntime 2026-13-01T00:00:00Z\n".encode(), "malformed time extension"),
        (f"o\n1\n{R64}\ntime 2026-11-22 12:00:00Z\n".encode(), "malformed time extension"),
        (f"o\n1\n{R64}\ntime 1\ntime 2\n".encode(), "more than one time extension"),
        ("o\n1\nAAAA\n", "must be bytes"),
    ],
)
def test_parse_rejects(body: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must be"),
        ({"origin": "a\nb"}, "newline"),
        ({"origin": "surrogate\udc00"}, "control character"),
        ({"tree_size": -1}, "tree size"),
        ({"tree_size": 2**64}, "tree size"),
        ({"tree_size": True}, "tree size"),
        ({"tree_size": 1.0}, "tree size"),
        ({"root_hash": b"short"}, "32 bytes"),
        ({"root_hash": ROOT.hex()}, "32 bytes"),
        ({"extensions": ["list"]}, "tuple"),
        ({"extensions": ("",)}, "empty"),
        ({"extensions": ("a\nb",)}, "newline"),
        ({"extensions": ("time soon",)}, "malformed time extension"),
    ],
)
def test_checkpoint_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "tree_size": 1, "root_hash": ROOT, **kwargs}
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Timestamps


def test_time_extension_helpers() -> None:
    assert format_time_extension(WHEN) == "time 2026-11-22T12:00:00Z"
    assert parse_time_extension("time 2026-11-22T12:00:00Z") == WHEN
    cet = timezone(timedelta(hours=1))
    assert format_time_extension(datetime(2026, 11, 22, 13, 0, 0, 999_999, tzinfo=cet)) == ("time 2026-11-22T12:00:00Z")
    early = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_time_extension(early) == "time 0999-01-02T03:04:05Z"
    assert parse_time_extension(format_time_extension(early)) == early
    with pytest.raises(CheckpointError, match="timezone-aware"):
        format_time_extension(datetime(2026, 11, 22, 12, 0, 0))
    for bad in ("time 2026-02-30T00:00:00Z", "time 2026-11-22T12:00:00", "time 2026-11-22T12:00:00+00:00"):
        with pytest.raises(CheckpointError, match="malformed time extension"):
            parse_time_extension(bad)


def test_with_timestamp_sets_and_replaces() -> None:
    cp = Checkpoint(ORIGIN, 3, ROOT, ("a", "b"))
    first = cp.with_timestamp(WHEN)
    assert first.extensions == ("a", "b", "time 2026-11-22T12:00:00Z")
    later = WHEN + timedelta(hours=1)
    second = first.with_timestamp(later)
    assert second.extensions == ("a", "b", "time 2026-11-22T13:00:00Z")
    assert second.timestamp == later
    assert Checkpoint.parse(second.body()).timestamp == later


def test_module_is_self_contained() -> None:
    # Shipped verbatim in evidence packs: standard library plus cryptography only.
    imports = top_level_imports(Path(checkpoint.__file__))
    assert imports <= set(sys.stdlib_module_names) | {"__future__", "cryptography"}, imports
