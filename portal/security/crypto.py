"""Cryptographic primitives for patient data at rest.

Envelope scheme (see the design doc):

* Every patient field / resource body is sealed with AES-256-GCM under a data
  key (DEK) that is specific to one patient and one data category.  The AAD
  binds the ciphertext to patient, table, column, row and DEK version, so a
  blob copied to another place in the database no longer decrypts.
* DEKs are stored wrapped (RFC 3394 AES key wrap) by a key-encryption key
  (KEK).  KEKs live in a :class:`KekRing` loaded by a provider: a local file
  for development / single-host installs, or an environment variable filled
  from a secret manager in production.
* Erasing a category means destroying its DEK: every copy of the ciphertext,
  including backups, becomes unreadable.
* Identifier lookups (MRN, ...) go through a keyed blind index, never the
  plaintext.

This module is deliberately free of database and configuration concerns; it
only deals in bytes, keys and files holding KEKs.  POSIX only (the KEK file
relies on permission bits, ``fcntl`` locks and directory fsync).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

__all__ = [
    "KEY_SIZE",
    "CryptoError",
    "DecryptionError",
    "EnvKekProvider",
    "FieldContext",
    "FileKekProvider",
    "InsecureKeyFileError",
    "KekProvider",
    "KekRing",
    "KekStoreError",
    "KeyUnwrapError",
    "UnknownKekError",
    "blind_index",
    "decrypt_field",
    "derive_subkey",
    "encrypt_field",
    "generate_data_key",
    "generate_signing_key",
    "open_signing_key",
    "public_key_fingerprint",
    "seal_signing_key",
    "unwrap_key",
    "wrap_key",
]

KEY_SIZE = 32
"""Size in bytes of every symmetric key handled here (DEKs, KEKs, HMAC/HKDF keys)."""

_FIELD_FORMAT_V1 = 1
_SEALED_KEY_FORMAT_V1 = 1
_NONCE_SIZE = 12
_TAG_SIZE = 16
_WRAPPED_KEY_SIZE = KEY_SIZE + 8  # RFC 3394 adds one 64-bit integrity block.

# Domain-separation tags.  They are part of the on-disk/database format:
# changing any of them makes every existing ciphertext / index unreadable.
_FIELD_AAD_TAG = b"portal/field-aad/v1\x00"
_BLIND_INDEX_TAG = b"portal/blind-index/v1\x00"
_SUBKEY_INFO_PREFIX = b"portal/subkey/v1\x00"
_SIGNING_KEY_SEAL_PURPOSE = "kek-seal:ed25519-signing-key"
_SIGNING_KEY_AAD = b"portal/sealed-signing-key/ed25519/v1"

_MAX_KEY_VERSION = 2**63 - 1  # fits a PostgreSQL bigint column
_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_KEK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_KEK_DOC_VERSION = 1


# --------------------------------------------------------------------------- errors


class CryptoError(Exception):
    """Base class for errors raised by this module."""


class DecryptionError(CryptoError):
    """A field blob could not be authenticated or parsed.

    Deliberately coarse: callers must treat every cause (wrong key, wrong
    context, tampering, truncation, unknown format) the same way.
    """


class KeyUnwrapError(CryptoError):
    """A wrapped DEK or sealed signing key failed its integrity check."""


class KekStoreError(CryptoError):
    """A KEK ring could not be loaded, parsed or modified."""


class InsecureKeyFileError(KekStoreError):
    """The KEK file or its directory is accessible to other users."""


class UnknownKekError(KekStoreError):
    """The requested KEK id is not in the ring (e.g. it was retired)."""


# --------------------------------------------------------------------------- helpers


def _check_key(key: object, name: str) -> None:
    # Keys are checked explicitly because AESGCM happily accepts 16/24-byte
    # keys, which would silently downgrade us from AES-256.
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"{name} must be bytes, not {type(key).__name__}")
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be exactly {KEY_SIZE} bytes, got {len(key)}")


def _check_label(value: object, name: str) -> str:
    # Namespaces and purposes are code constants; restricting them to one
    # lowercase spelling stops "MRN" and "mrn" from silently becoming two
    # unrelated indexes / keys.
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise ValueError(f"{name} must match {_LABEL_RE.pattern!r}, got {value!r}")
    return value


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


# --------------------------------------------------------------------------- field encryption


@dataclass(frozen=True)
class FieldContext:
    """Where a ciphertext lives; bound into the AES-GCM AAD.

    ``key_version`` is the version of the DEK used, so a blob cannot be passed
    off as belonging to another DEK generation.
    """

    patient_id: str
    table: str
    column: str
    row_id: str
    key_version: int

    def __post_init__(self) -> None:
        for name in ("patient_id", "table", "column", "row_id"):
            _check_context_str(getattr(self, name), name)
        _check_key_version(self.key_version)

    def aad(self) -> bytes:
        """Canonical encoding: format tag, then each field length-prefixed.

        Every string is UTF-8 with a 4-byte big-endian length, and the key
        version is a fixed 8-byte big-endian integer, so the encoding is
        injective: ("ab", "c") and ("a", "bc") cannot collide.
        """
        parts = [
            _FIELD_AAD_TAG,
            _length_prefixed(self.patient_id.encode("utf-8")),
            _length_prefixed(self.table.encode("utf-8")),
            _length_prefixed(self.column.encode("utf-8")),
            _length_prefixed(self.row_id.encode("utf-8")),
            struct.pack(">Q", self.key_version),
        ]
        return b"".join(parts)


def _check_context_str(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"FieldContext.{name} must be str, not {type(value).__name__}")
    # An empty component almost always means a missing id upstream; binding
    # to "" would make unrelated records share a context.
    if not value:
        raise ValueError(f"FieldContext.{name} must not be empty")
    # Fail at construction rather than at encryption time for lone surrogates.
    value.encode("utf-8")


def _check_key_version(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"FieldContext.key_version must be int, not {type(value).__name__}")
    if not 0 <= value <= _MAX_KEY_VERSION:
        raise ValueError(f"FieldContext.key_version must be in [0, 2**63-1], got {value}")


def encrypt_field(dek: bytes, plaintext: bytes, ctx: FieldContext) -> bytes:
    """Encrypt one field/resource body; returns ``version || nonce || ciphertext+tag``."""
    _check_key(dek, "dek")
    header = bytes([_FIELD_FORMAT_V1])
    # Random 96-bit nonces are safe up to ~2**32 messages per key (NIST
    # SP 800-38D); per-patient, per-category DEKs stay far below that.
    nonce = secrets.token_bytes(_NONCE_SIZE)
    # The version byte is authenticated too, so a future format cannot be
    # confused with (or downgraded to) this one.
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, header + ctx.aad())
    return header + nonce + ciphertext


def decrypt_field(dek: bytes, blob: bytes, ctx: FieldContext) -> bytes:
    """Decrypt a blob from :func:`encrypt_field`; raises :class:`DecryptionError` on any failure."""
    _check_key(dek, "dek")
    if len(blob) < 1:
        raise DecryptionError("ciphertext is empty")
    if blob[0] != _FIELD_FORMAT_V1:
        raise DecryptionError(f"unsupported field format version {blob[0]}")
    if len(blob) < 1 + _NONCE_SIZE + _TAG_SIZE:
        raise DecryptionError("ciphertext is truncated")
    header, nonce, ciphertext = blob[:1], blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
    try:
        return AESGCM(dek).decrypt(nonce, ciphertext, bytes(header) + ctx.aad())
    except InvalidTag:
        # `from None`: callers should never need (or see) cryptography's types.
        raise DecryptionError("ciphertext failed authentication (wrong key, wrong context or modified data)") from None


# --------------------------------------------------------------------------- DEKs and key wrap


def generate_data_key() -> bytes:
    """Return a fresh random 32-byte DEK."""
    return secrets.token_bytes(KEY_SIZE)


def wrap_key(kek: bytes, dek: bytes) -> bytes:
    """Wrap a 32-byte DEK under a 32-byte KEK (RFC 3394); returns 40 bytes."""
    _check_key(kek, "kek")
    _check_key(dek, "dek")
    return aes_key_wrap(bytes(kek), bytes(dek))


def unwrap_key(kek: bytes, wrapped: bytes) -> bytes:
    """Unwrap a DEK; raises :class:`KeyUnwrapError` on a wrong KEK or damaged input."""
    _check_key(kek, "kek")
    if len(wrapped) != _WRAPPED_KEY_SIZE:
        raise KeyUnwrapError(f"wrapped key must be {_WRAPPED_KEY_SIZE} bytes, got {len(wrapped)}")
    try:
        return aes_key_unwrap(bytes(kek), bytes(wrapped))
    except InvalidUnwrap:
        raise KeyUnwrapError("key unwrap failed (wrong KEK or modified wrapped key)") from None


# --------------------------------------------------------------------------- KEK ring


class KekRing:
    """Immutable set of KEKs by id, one of which is current.

    New DEKs are wrapped with the current KEK; older KEKs stay available so
    DEKs wrapped before a rotation can still be unwrapped until they are
    re-wrapped and the old KEK is retired.
    """

    __slots__ = ("_current_id", "_keys")

    def __init__(self, keys: Mapping[str, bytes], current_id: str) -> None:
        if not keys:
            raise ValueError("a KEK ring needs at least one key")
        copied: dict[str, bytes] = {}
        for kek_id, key in keys.items():
            _check_kek_id(kek_id)
            _check_key(key, f"KEK {kek_id!r}")
            copied[kek_id] = bytes(key)
        if current_id not in copied:
            raise ValueError(f"current KEK id {current_id!r} is not in the ring")
        self._keys: Mapping[str, bytes] = MappingProxyType(copied)
        self._current_id = current_id

    def __repr__(self) -> str:
        # Never include key material: rings end up in logs and tracebacks.
        return f"KekRing(current_id={self._current_id!r}, ids={list(self._keys)!r})"

    @classmethod
    def generate(cls) -> KekRing:
        """A new ring holding a single random KEK."""
        kek_id = _new_kek_id(())
        return cls({kek_id: secrets.token_bytes(KEY_SIZE)}, kek_id)

    @property
    def current_id(self) -> str:
        return self._current_id

    @property
    def current_key(self) -> bytes:
        return self._keys[self._current_id]

    @property
    def ids(self) -> tuple[str, ...]:
        """KEK ids, oldest first."""
        return tuple(self._keys)

    def get(self, kek_id: str) -> bytes:
        try:
            return self._keys[kek_id]
        except KeyError:
            raise UnknownKekError(f"unknown KEK id {kek_id!r} (ring has {list(self._keys)})") from None

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        """Wrap ``dek`` with the current KEK; store the returned id next to the wrapped key."""
        return self._current_id, wrap_key(self.current_key, dek)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        return unwrap_key(self.get(kek_id), wrapped)

    def rotated(self) -> KekRing:
        """A copy with a new random KEK added and made current."""
        kek_id = _new_kek_id(self._keys)
        return KekRing({**self._keys, kek_id: secrets.token_bytes(KEY_SIZE)}, kek_id)

    def retired(self, kek_id: str) -> KekRing:
        """A copy without ``kek_id``; the current KEK cannot be retired."""
        self.get(kek_id)
        if kek_id == self._current_id:
            raise KekStoreError(f"cannot retire the current KEK {kek_id!r}; rotate first")
        return KekRing({k: v for k, v in self._keys.items() if k != kek_id}, self._current_id)

    def to_json(self) -> str:
        """Serialize (including key material!) to the document format providers read."""
        doc = {
            "version": _KEK_DOC_VERSION,
            "current": self._current_id,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in self._keys.items()},
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, document: str | bytes) -> KekRing:
        """Parse the document produced by :meth:`to_json`; raises :class:`KekStoreError`."""
        try:
            doc = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            # Only the message: the exception object holds the whole document.
            raise KekStoreError(f"KEK document is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise KekStoreError("KEK document must be a JSON object")
        unknown = set(doc) - {"version", "current", "keys"}
        if unknown:
            raise KekStoreError(f"KEK document has unknown fields {sorted(unknown)}")
        if doc.get("version") != _KEK_DOC_VERSION:
            raise KekStoreError(f"KEK document version must be {_KEK_DOC_VERSION}")
        current, raw_keys = doc.get("current"), doc.get("keys")
        if not isinstance(current, str):
            raise KekStoreError("KEK document 'current' must be a string")
        if not isinstance(raw_keys, dict):
            raise KekStoreError("KEK document 'keys' must be an object of id -> base64 key")
        keys = {kek_id: _decode_kek(kek_id, value) for kek_id, value in raw_keys.items()}
        try:
            return cls(keys, current)
        except (TypeError, ValueError) as exc:
            raise KekStoreError(f"invalid KEK document: {exc}") from None


def _check_kek_id(kek_id: object) -> None:
    if not isinstance(kek_id, str) or not _KEK_ID_RE.fullmatch(kek_id):
        raise ValueError(f"KEK id must match {_KEK_ID_RE.pattern!r}, got {kek_id!r}")


def _new_kek_id(existing: Iterable[str]) -> str:
    taken = set(existing)
    # Random rather than sequential ids so a retired id is never reused for
    # a different key (a stale reference then fails loudly as unknown).
    while True:
        kek_id = secrets.token_hex(4)
        if kek_id not in taken:
            return kek_id


def _decode_kek(kek_id: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise KekStoreError(f"KEK {kek_id!r} must be a base64 string")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KekStoreError(f"KEK {kek_id!r} is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise KekStoreError(f"KEK {kek_id!r} must decode to {KEY_SIZE} bytes, got {len(key)}")
    return key


# --------------------------------------------------------------------------- KEK providers


class KekProvider(Protocol):
    """Source of the KEK ring.  Callers load once and keep the ring."""

    def load(self) -> KekRing: ...

    def rotate(self) -> KekRing: ...

    def retire(self, kek_id: str) -> KekRing: ...


class FileKekProvider:
    """KEK ring in a local JSON file (development and single-host installs).

    The file is created on first :meth:`load` with mode 0600 (its directory,
    if created, 0700) and is refused if it is accessible by group/other or
    sits in a group/world-writable directory, because whoever can replace the
    file can make us wrap new DEKs under a KEK they know.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    def __repr__(self) -> str:
        return f"FileKekProvider({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> KekRing:
        """Read the ring, creating the file with a fresh KEK if it does not exist."""
        try:
            return self._read()
        except FileNotFoundError:
            return self._create()

    def rotate(self) -> KekRing:
        """Add a new current KEK, keeping the old ones for unwrapping; returns the new ring."""
        with self._locked():
            ring = self.load().rotated()
            self._write(ring)
            return ring

    def retire(self, kek_id: str) -> KekRing:
        """Remove an old KEK.

        Only do this once every DEK wrapped under it has been re-wrapped and
        every running process has reloaded the ring: anything still wrapped
        under a retired KEK is lost for good.
        """
        with self._locked():
            ring = self.load().retired(kek_id)
            self._write(ring)
            return ring

    def _read(self) -> KekRing:
        self._check_directory()
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            # fstat on the open descriptor: checks the file we actually read,
            # not whatever the path points to a moment later.
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KekStoreError(f"KEK file {self._path} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise InsecureKeyFileError(
                    f"refusing to use KEK file {self._path}: mode {mode:04o} gives group/other "
                    f"access; it must be 0600 (chmod 600 {self._path})"
                )
            data = fh.read()
        try:
            return KekRing.from_json(data)
        except KekStoreError as exc:
            raise KekStoreError(f"KEK file {self._path}: {exc}") from None

    def _create(self) -> KekRing:
        # Only the leaf directory gets 0700 (pathlib creates missing
        # ancestors with default permissions, like `mkdir -p`).
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_directory()
        ring = KekRing.generate()
        # FileExistsError: another process created it first; its keys win.
        with contextlib.suppress(FileExistsError):
            self._write(ring, replace=False)
        return self._read()

    def _write(self, ring: KekRing, *, replace: bool = True) -> None:
        """Write via a 0600 temp file so readers never see a partial document."""
        tmp = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                # The umask can only remove bits, but make the mode exact anyway.
                os.fchmod(fh.fileno(), 0o600)
                fh.write(ring.to_json().encode("utf-8"))
                fh.flush()
                # Losing the KEK file after a crash would lose every patient
                # record, so make it durable before it becomes visible.
                os.fsync(fh.fileno())
            if replace:
                tmp.replace(self._path)
            else:
                # link() fails if the target exists, giving create-if-absent
                # semantics without ever exposing a half-written file.
                self._path.hardlink_to(tmp)
            self._fsync_directory()
        finally:
            tmp.unlink(missing_ok=True)

    def _check_directory(self) -> None:
        directory = self._path.parent
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InsecureKeyFileError(
                f"refusing to use KEK file {self._path}: directory {directory} has mode "
                f"{mode:04o} and is writable by group/other"
            )

    def _fsync_directory(self) -> None:
        fd = os.open(self._path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises read-modify-write across processes: two concurrent
        # rotations would otherwise each drop the other's new KEK.
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock


class EnvKekProvider:
    """Read-only KEK ring supplied by a secret manager (production).

    ``value`` (typically ``Settings.kek``, i.e. ``PORTAL_KEK``) is the
    :meth:`KekRing.to_json` document, either verbatim or base64-encoded (some
    secret managers mangle multi-line values).  It is parsed immediately so a
    bad secret fails at startup.
    """

    def __init__(self, value: str) -> None:
        self._ring = _parse_env_value(value)

    def __repr__(self) -> str:
        return f"EnvKekProvider(current_id={self._ring.current_id!r})"

    def load(self) -> KekRing:
        return self._ring

    def rotate(self) -> KekRing:
        raise KekStoreError(
            "EnvKekProvider is read-only: rotate KEKs in the secret manager (add a new key and "
            "make it current, redeploy, then re-wrap DEKs)"
        )

    def retire(self, kek_id: str) -> KekRing:
        raise KekStoreError(
            f"EnvKekProvider is read-only: retire KEK {kek_id!r} in the secret manager once no "
            "DEK is wrapped under it, then redeploy"
        )


def _parse_env_value(value: str) -> KekRing:
    text = value.strip()
    if not text:
        raise KekStoreError("KEK ring value is empty")
    if not text.startswith("{"):
        try:
            text = base64.b64decode("".join(text.split()), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            # Never echo the value: it is the key material.
            raise KekStoreError("KEK ring value is neither a JSON document nor base64 of one") from None
    return KekRing.from_json(text)


# --------------------------------------------------------------------------- blind index and KDF


def _normalize_identifier(value: str) -> str:
    # NFKC folds compatibility forms (full-width digits, ligatures) and the
    # second NFKC after casefold() is the Unicode "compatibility caseless"
    # recipe; whitespace is dropped everywhere because staff type MRNs as
    # "123 456" as often as "123456". ASCII text is its own NFKC form and
    # casefolds to lower(), so it skips the two normalizations.
    if value.isascii():
        folded = value.lower()
    else:
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return "".join(folded.split())


def blind_index(key: bytes, namespace: str, value: str) -> str:
    """Keyed lookup token for an identifier: 64 lowercase hex chars.

    ``value`` is normalized first: Unicode NFKC, casefolded, NFKC again and
    all whitespace (leading, trailing and internal) removed, so
    ``" ab 12\\u00a03 "`` and ``"AB123"`` match.  Punctuation is kept.
    ``namespace`` (e.g. ``"mrn"``) separates identifier kinds, so the same
    string indexed as an MRN and as an insurance number gives unrelated tokens.
    Low-entropy values (dates of birth) are only as safe as ``key``.
    """
    _check_key(key, "blind index key")
    _check_label(namespace, "namespace")
    normalized = _normalize_identifier(value)
    if not normalized:
        raise ValueError("cannot index an empty identifier")
    message = (
        _BLIND_INDEX_TAG + _length_prefixed(namespace.encode("utf-8")) + _length_prefixed(normalized.encode("utf-8"))
    )
    return hmac.digest(bytes(key), message, "sha256").hex()


def derive_subkey(master: bytes, purpose: str) -> bytes:
    """Derive a 32-byte key for ``purpose`` (e.g. ``"blind-index"``, ``"csrf"``) with HKDF-SHA256.

    ``master`` must be at least 32 bytes; longer secrets (such as the encoded
    instance secret) are fine, HKDF-Extract condenses them.
    """
    if not isinstance(master, bytes | bytearray):
        raise TypeError(f"master key must be bytes, not {type(master).__name__}")
    if len(master) < KEY_SIZE:
        raise ValueError(f"master key must be at least {KEY_SIZE} bytes, got {len(master)}")
    _check_label(purpose, "purpose")
    # No salt: RFC 5869 makes it optional, and there is nowhere stable to
    # keep one; separation between purposes comes from `info`.
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=None,
        info=_SUBKEY_INFO_PREFIX + purpose.encode("ascii"),
    )
    return hkdf.derive(bytes(master))


# --------------------------------------------------------------------------- signing key


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 key for ledger checkpoints, consent receipts and export manifests."""
    return Ed25519PrivateKey.generate()


def seal_signing_key(kek: bytes, key: Ed25519PrivateKey) -> bytes:
    """Encrypt the raw private key: ``version || nonce || AES-GCM(raw key)`` with a fixed AAD.

    The AES-GCM key is derived from the KEK (HKDF) rather than the KEK itself,
    so the KEK is only ever used directly for RFC 3394 wrapping.
    """
    _check_key(kek, "kek")
    header = bytes([_SEALED_KEY_FORMAT_V1])
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealing_key = derive_subkey(kek, _SIGNING_KEY_SEAL_PURPOSE)
    ciphertext = AESGCM(sealing_key).encrypt(nonce, key.private_bytes_raw(), header + _SIGNING_KEY_AAD)
    return header + nonce + ciphertext


def open_signing_key(kek: bytes, blob: bytes) -> Ed25519PrivateKey:
    """Reverse :func:`seal_signing_key`; raises :class:`KeyUnwrapError` on wrong KEK or damage."""
    _check_key(kek, "kek")
    expected = 1 + _NONCE_SIZE + KEY_SIZE + _TAG_SIZE
    if len(blob) != expected:
        raise KeyUnwrapError(f"sealed signing key must be {expected} bytes, got {len(blob)}")
    if blob[0] != _SEALED_KEY_FORMAT_V1:
        raise KeyUnwrapError(f"unsupported sealed signing key version {blob[0]}")
    header, nonce, ciphertext = blob[:1], blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
    sealing_key = derive_subkey(kek, _SIGNING_KEY_SEAL_PURPOSE)
    try:
        raw = AESGCM(sealing_key).decrypt(nonce, ciphertext, bytes(header) + _SIGNING_KEY_AAD)
    except InvalidTag:
        raise KeyUnwrapError("cannot open signing key (wrong KEK or modified data)") from None
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_fingerprint(pub: Ed25519PublicKey) -> str:
    """SHA-256 of the 32-byte raw public key, lowercase hex in 16 space-separated groups of 4.

    Example shape: ``"ab12 cd34 ... 9f0e"`` (79 chars).  Compare by removing
    spaces if a tool prints it ungrouped.
    """
    digest = hashlib.sha256(pub.public_bytes_raw()).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))
