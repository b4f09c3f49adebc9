"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed-note envelopes (Ed25519).

Formats follow c2sp.org/tlog-checkpoint and c2sp.org/signed-note, and are
byte-compatible with golang.org/x/mod/sumdb/note. This file needs only the
Python standard library and ``cryptography`` and imports nothing else from the
portal: it is shipped verbatim in evidence packs for offline verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "TIME_EXTENSION_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "format_time_extension",
    "key_id",
    "parse_time_extension",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
    "verifier_key_string",
    "verify_checkpoint",
    "verify_note",
]


class CheckpointError(ValueError):
    """A checkpoint, note or key is malformed, or a signature does not verify."""


ROOT_HASH_SIZE = 32
#: Signature type byte for Ed25519 in c2sp.org/signed-note.
ED25519_SIGNATURE_TYPE = 0x01
#: Same cap as the Go reference; the spec requires accepting at least 16.
MAX_SIGNATURES = 100
#: Our extension line carrying the signing time, e.g. "time 2026-11-22T12:00:00Z".
TIME_EXTENSION_PREFIX = "time "

_MAX_TREE_SIZE = (1 << 64) - 1
_SIG_LINE_PREFIX = "\u2014 "  # em dash, space
_ED25519_SIG_SIZE = 64
_KEY_ID_SIZE = 4
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_TIME_LINE = re.compile(
    re.escape(TIME_EXTENSION_PREFIX) + r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z"
)


# ---------------------------------------------------------------------------
# Small strict helpers


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only (one encoding per byte string)."""
    if not _BASE64.fullmatch(text):
        raise CheckpointError(f"{what} is not valid base64: {text!r}")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex already rules this out
        raise CheckpointError(f"{what} is not valid base64: {text!r}") from exc
    # Unused low bits in the last character would give one value several spellings.
    if _b64encode(data) != text:
        raise CheckpointError(f"{what} is not canonical base64: {text!r}")
    return data


def _control_char(text: str) -> str | None:
    """Describe the first ASCII control character other than newline (or lone surrogate), if any."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            # Would fail to encode: notes must be valid UTF-8.
            return f"lone surrogate U+{ord(ch):04X} at offset {i}"
        if ch < " " and ch != "\n":
            return f"control character U+{ord(ch):04X} at offset {i}"
    return None


def _key_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "key name must be a non-empty string"
    if "+" in name:
        return f"key name {name!r} contains '+'"
    if any(ch.isspace() for ch in name):
        return f"key name {name!r} contains whitespace"
    problem = _control_char(name)
    if problem:
        return f"key name {name!r} contains a {problem}"
    return None


def _check_key_name(name: str) -> None:
    problem = _key_name_problem(name)
    if problem:
        raise CheckpointError(problem)


def _is_ed25519_public(key: object) -> bool:
    return isinstance(key, Ed25519PublicKey)


# ---------------------------------------------------------------------------
# Keys


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4] (signed-note, Ed25519)."""
    _check_key_name(name)
    if not _is_ed25519_public(public_key):
        raise CheckpointError("public key must be an Ed25519PublicKey")
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + raw).digest()[:_KEY_ID_SIZE]


def verifier_key_string(name: str, public_key: Ed25519PublicKey) -> str:
    """``<name>+<hex key id>+<base64(0x01 || public key)>``, as in sumdb/note."""
    kid = key_id(name, public_key)
    encoded = _b64encode(bytes([ED25519_SIGNATURE_TYPE]) + public_key.public_bytes_raw())
    return f"{name}+{kid.hex()}+{encoded}"


def parse_verifier_key(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """Parse a verifier key string into (name, 4-byte key id, public key); strict."""
    if not isinstance(vkey, str):
        raise CheckpointError("verifier key must be a string")
    # Base64 may itself contain '+', so only the first two are separators.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("invalid verifier key: expected <name>+<hex key id>+<base64 key>")
    name, hex_id, encoded = parts
    problem = _key_name_problem(name)
    if problem:
        raise CheckpointError(f"invalid verifier key: {problem}")
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise CheckpointError(f"invalid verifier key: key id {hex_id!r} is not 8 hex digits")
    raw = _b64decode(encoded, "verifier key")
    if not raw or raw[0] != ED25519_SIGNATURE_TYPE:
        kind = f"0x{raw[0]:02x}" if raw else "missing"
        raise CheckpointError(f"invalid verifier key: unsupported signature type {kind} (only Ed25519)")
    if len(raw) != 1 + 32:
        raise CheckpointError(f"invalid verifier key: Ed25519 key is {len(raw) - 1} bytes, expected 32")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    kid = key_id(name, public_key)
    if kid != bytes.fromhex(hex_id):
        raise CheckpointError(
            f"invalid verifier key: key id {hex_id} does not match name and key (expected {kid.hex()})"
        )
    return name, kid, public_key


# ---------------------------------------------------------------------------
# Timestamp extension


def format_time_extension(when: datetime) -> str:
    """``time YYYY-MM-DDTHH:MM:SSZ`` in UTC; sub-second precision is dropped."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise CheckpointError("timestamp must be timezone-aware")
    t = when.astimezone(UTC)
    # Explicit widths: strftime("%Y") does not zero-pad years below 1000 on every platform.
    return f"{TIME_EXTENSION_PREFIX}{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def parse_time_extension(line: str) -> datetime:
    """Inverse of :func:`format_time_extension`; returns an aware UTC datetime."""
    match = _TIME_LINE.fullmatch(line)
    if not match:
        raise CheckpointError(f"malformed time extension {line!r}: expected 'time YYYY-MM-DDTHH:MM:SSZ'")
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise CheckpointError(f"malformed time extension {line!r}: {exc}") from exc


# ---------------------------------------------------------------------------
# Checkpoint body


def _field_problem(origin: object, tree_size: object, root_hash: object, extensions: object) -> str | None:
    if not isinstance(origin, str) or not origin:
        return "origin must be a non-empty string"
    if "\n" in origin or _control_char(origin):
        return f"origin {origin!r} contains a newline or control character"
    # bool is an int subclass; a size of True is a bug, not 1.
    if type(tree_size) is not int or not 0 <= tree_size <= _MAX_TREE_SIZE:
        return f"tree size {tree_size!r} is not an integer in 0..2**64-1"
    if not isinstance(root_hash, bytes) or len(root_hash) != ROOT_HASH_SIZE:
        return f"root hash must be {ROOT_HASH_SIZE} bytes"
    if not isinstance(extensions, tuple):
        return "extensions must be a tuple of strings"
    time_lines = 0
    for i, ext in enumerate(extensions):
        if not isinstance(ext, str) or not ext:
            return f"extension line {i} is empty or not a string"
        if "\n" in ext or _control_char(ext):
            return f"extension line {i} contains a newline or control character"
        if ext.startswith(TIME_EXTENSION_PREFIX):
            time_lines += 1
    if time_lines > 1:
        return "more than one time extension line"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint note body: origin, tree size, root hash, optional extension lines."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _field_problem(self.origin, self.tree_size, self.root_hash, self.extensions)
        if problem:
            raise CheckpointError(f"invalid checkpoint: {problem}")
        for ext in self.extensions:
            if ext.startswith(TIME_EXTENSION_PREFIX):
                parse_time_extension(ext)

    def body(self) -> bytes:
        """The note text: every line, including the last, ends in a newline."""
        lines = [self.origin, str(self.tree_size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Strictly parse a note text produced by :meth:`body` (or any conforming log)."""
        if not isinstance(body, bytes):
            raise CheckpointError("checkpoint body must be bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"checkpoint body is not valid UTF-8: {exc.reason}") from exc
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        problem = _control_char(text)
        if problem:
            raise CheckpointError(f"checkpoint body contains a {problem}")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint body needs at least 3 lines (origin, tree size, root hash), got {len(lines)}"
            )
        for number, line in enumerate(lines, start=1):
            if not line:
                raise CheckpointError(f"checkpoint line {number} is empty")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text) or int(size_text) > _MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {size_text!r} is not a decimal uint64 without leading zeros")
        root_hash = _b64decode(root_text, "root hash")
        if len(root_hash) != ROOT_HASH_SIZE:
            raise CheckpointError(f"root hash is {len(root_hash)} bytes, expected {ROOT_HASH_SIZE}")
        return cls(origin, int(size_text), root_hash, tuple(extensions))

    @property
    def timestamp(self) -> datetime | None:
        """The time extension as an aware UTC datetime, or None if absent."""
        for ext in self.extensions:
            if ext.startswith(TIME_EXTENSION_PREFIX):
                return parse_time_extension(ext)
        return None

    def with_timestamp(self, when: datetime) -> Checkpoint:
        """Copy with the time extension set (replaced in place, else appended)."""
        line = format_time_extension(when)
        exts = list(self.extensions)
        for i, ext in enumerate(exts):
            if ext.startswith(TIME_EXTENSION_PREFIX):
                exts[i] = line
                break
        else:
            exts.append(line)
        return replace(self, extensions=tuple(exts))


# ---------------------------------------------------------------------------
# Signed notes


def _check_note_text(body: bytes) -> None:
    if not isinstance(body, bytes) or not body:
        raise CheckpointError("note text must be non-empty bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"note text is not valid UTF-8: {exc.reason}") from exc
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    problem = _control_char(text)
    if problem:
        raise CheckpointError(f"note text contains a {problem}")


def sign_note(body: bytes, key_name: str, private_key: Ed25519PrivateKey) -> bytes:
    """Return ``body || "\\n" || "— <key name> <base64(key id || signature)>\\n"``."""
    _check_note_text(body)
    _check_key_name(key_name)
    kid = key_id(key_name, private_key.public_key())
    signature = private_key.sign(body)
    line = f"{_SIG_LINE_PREFIX}{key_name} {_b64encode(kid + signature)}\n"
    return body + b"\n" + line.encode()


def _parse_signature_lines(block: str) -> Iterable[tuple[str, bytes, bytes]]:
    """Yield (name, key id, signature) for each line of a signature block; strict."""
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signature lines")
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_LINE_PREFIX):
            raise CheckpointError(f"malformed note: signature line {number} does not start with an em dash and a space")
        name, sep, encoded = line[len(_SIG_LINE_PREFIX) :].partition(" ")
        if not sep or not encoded:
            raise CheckpointError(f"malformed note: signature line {number} has no signature")
        problem = _key_name_problem(name)
        if problem:
            raise CheckpointError(f"malformed note: signature line {number}: {problem}")
        raw = _b64decode(encoded, f"signature on line {number}")
        if len(raw) <= _KEY_ID_SIZE:
            raise CheckpointError(f"malformed note: signature line {number} is too short")
        yield name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]


def _ed25519_verifies(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    if len(signature) != _ED25519_SIG_SIZE:
        return False
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def verify_note(note: bytes, verifier_key: str) -> bytes:
    """Verify ``note`` against one verifier key; return the signed text.

    Signatures by other keys are ignored (as the spec requires), but every
    signature line claiming this key's name and id must verify, and at least one must.
    """
    name, kid, public_key = parse_verifier_key(verifier_key)
    if not isinstance(note, bytes):
        raise CheckpointError("malformed note: must be bytes")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"malformed note: not valid UTF-8 ({exc.reason})") from exc
    problem = _control_char(text)
    if problem:
        raise CheckpointError(f"malformed note: {problem}")
    # The text may itself contain blank lines; the last one starts the signatures.
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block:
        raise CheckpointError("malformed note: no signature lines")
    if not block.endswith("\n"):
        raise CheckpointError("malformed note: last signature line does not end with a newline")
    body_bytes = body.encode()
    seen: list[str] = []
    verified = False
    for sig_name, sig_kid, signature in _parse_signature_lines(block):
        if sig_name != name or sig_kid != kid:
            seen.append(f"{sig_name}+{sig_kid.hex()}")
            continue
        if not _ed25519_verifies(public_key, signature, body_bytes):
            raise CheckpointError(f"invalid signature for key {name}+{kid.hex()}")
        verified = True
    if not verified:
        raise CheckpointError(
            f"unknown key: note has no signature from {name}+{kid.hex()} (signed by: {', '.join(seen)})"
        )
    return body_bytes


# ---------------------------------------------------------------------------
# Checkpoint conveniences


def sign_checkpoint(checkpoint: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> bytes:
    """Signed note for ``checkpoint``; the key name should normally equal the origin."""
    return sign_note(checkpoint.body(), key_name, private_key)


def verify_checkpoint(note: bytes, verifier_key: str, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint and parse it; optionally insist on its origin."""
    checkpoint = Checkpoint.parse(verify_note(note, verifier_key))
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin {checkpoint.origin!r} is not the expected {origin!r}")
    return checkpoint
