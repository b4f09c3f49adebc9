"""Encrypted, integrity-checked backups of the main database (never the key store).

The archive is a logical dump (one JSON line per row, gzip) sealed in AES-256-GCM chunks under
a fresh backup key, which is wrapped by the key-encryption key and stored in the header. Every
chunk's AAD binds the header, its index and whether it is the last, so reordering, dropping or
truncating chunks fails; a trailer with row counts per table is checked on restore.

Being logical, a backup taken on SQLite restores into PostgreSQL and back. Patient data in it is
still encrypted under per-patient keys that live in the key store, so an erased patient's data
in an old backup stays unreadable.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Date, DateTime, Engine, LargeBinary, Table, func, insert, select

from portal import migrate
from portal.db import utcnow
from portal.models import Base
from portal.security.crypto import KekRing, generate_data_key

MAGIC = b"PORTAL-BACKUP\x00\x01"
CHUNK_BYTES = 1 << 20
INSERT_BATCH = 1000
_NONCE = 12


class BackupError(Exception):
    """The archive is damaged, was made with another key, or cannot be restored here."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    revision: str | None
    rows: dict[str, int]


def create_backup(engine: Engine, ring: KekRing, path: Path) -> BackupSummary:
    revision = migrate.current_revision(engine)
    key = generate_data_key()
    kek_id, wrapped = ring.wrap(key)
    header = json.dumps(
        {
            "format": 1,
            "created_at": utcnow().isoformat(),
            "revision": revision,
            "dialect": engine.dialect.name,
            "kek_id": kek_id,
            "wrapped_key": base64.b64encode(wrapped).decode(),
        }
    ).encode()
    counts: dict[str, int] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("wb") as out:
        out.write(MAGIC + struct.pack(">I", len(header)) + header)
        sealer = _ChunkSealer(out, key, header)
        with gzip.GzipFile(fileobj=sealer, mode="wb", mtime=0) as stream, engine.connect() as conn:
            for table in _backed_up_tables():
                counts[table.name] = 0
                for row in conn.execute(select(table)).mappings():
                    stream.write(_encode_row(table, dict(row)))
                    counts[table.name] += 1
            stream.write(json.dumps({"trailer": counts}).encode() + b"\n")
        sealer.finish()
    tmp.replace(path)
    return BackupSummary(path, revision, counts)


def restore_backup(engine: Engine, ring: KekRing, path: Path) -> BackupSummary:
    """Restore into an empty database, then migrate it to the latest revision."""
    _require_empty(engine)
    with path.open("rb") as source:
        header, raw, key = _read_header(source, ring)
        revision = header.get("revision")
        url = engine.url.render_as_string(hide_password=False)
        if revision:
            migrate.upgrade(url, revision)
        counts = _load_rows(engine, gzip.GzipFile(fileobj=_ChunkOpener(source, key, raw)))
    migrate.upgrade(url)
    return BackupSummary(path, revision, counts)


def _load_rows(engine: Engine, stream: Iterable[bytes]) -> dict[str, int]:
    tables = {table.name: table for table in _backed_up_tables()}
    counts: dict[str, int] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    trailer: dict[str, int] | None = None
    with engine.begin() as conn:
        for line in stream:
            record = json.loads(line)
            if "trailer" in record:
                trailer = record["trailer"]
                continue
            table = tables[record["t"]]
            batch = pending.setdefault(table.name, [])
            batch.append(_decode_row(table, record["r"]))
            counts[table.name] = counts.get(table.name, 0) + 1
            if len(batch) >= INSERT_BATCH:
                conn.execute(insert(table), batch)
                batch.clear()
        for name in [t.name for t in Base.metadata.sorted_tables]:
            if pending.get(name):
                conn.execute(insert(tables[name]), pending[name])
        expected = {name: n for name, n in (trailer or {}).items() if n}
        if trailer is None or expected != counts:
            raise BackupError("the archive is incomplete: its row counts do not match its trailer")
    return counts


def _backed_up_tables() -> list[Table]:
    """Every table but derived ones, which the database rebuilds (by trigger) as the rows are restored."""
    return [table for table in Base.metadata.sorted_tables if not table.info.get("derived")]


def _require_empty(engine: Engine) -> None:
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if not engine.dialect.has_table(conn, table.name):
                continue
            if conn.execute(select(func.count()).select_from(table)).scalar():
                raise BackupError(f"the target database is not empty (table {table.name} has rows)")


def _encode_row(table: Table, row: dict[str, Any]) -> bytes:
    encoded = {}
    for column in table.columns:
        value = row[column.name]
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        elif isinstance(value, datetime | date):
            value = value.isoformat()
        encoded[column.name] = value
    return json.dumps({"t": table.name, "r": encoded}, separators=(",", ":")).encode() + b"\n"


def _decode_row(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    decoded = {}
    for column in table.columns:
        value = row.get(column.name)
        if value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64decode(value)
        elif value is not None and _is_datetime(column.type):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(column.type, Date):
            value = date.fromisoformat(value)
        decoded[column.name] = value
    return decoded


def _is_datetime(column_type: Any) -> bool:
    impl = getattr(column_type, "impl", column_type)
    return isinstance(impl, DateTime)


def _chunk_aad(header: bytes, index: int, last: bool) -> bytes:
    return hashlib.sha256(header).digest() + struct.pack(">Q?", index, last)


class _ChunkSealer(io.RawIOBase):
    """A write-only file object that seals what is written in AES-GCM chunks."""

    def __init__(self, out: IO[bytes], key: bytes, header: bytes) -> None:
        self._out, self._aead, self._header = out, AESGCM(key), header
        self._buffer = bytearray()
        self._index = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer.extend(data)
        while len(self._buffer) > CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _seal(self, plaintext: bytes, *, last: bool) -> None:
        nonce = generate_data_key()[:_NONCE]
        sealed = self._aead.encrypt(nonce, plaintext, _chunk_aad(self._header, self._index, last))
        self._out.write(struct.pack(">I?", len(sealed), last) + nonce + sealed)
        self._index += 1


class _ChunkOpener(io.RawIOBase):
    """A read-only file object over the sealed chunks; any damage raises BackupError."""

    def __init__(self, source: IO[bytes], key: bytes, header: bytes) -> None:
        self._source, self._aead, self._header = source, AESGCM(key), header
        self._chunks = self._open_chunks()
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def _open_chunks(self) -> Iterator[bytes]:
        index = 0
        while True:
            prefix = self._source.read(5)
            if len(prefix) < 5:
                raise BackupError("the archive is truncated")
            length, last = struct.unpack(">I?", prefix)
            nonce = self._source.read(_NONCE)
            sealed = self._source.read(length)
            try:
                yield self._aead.decrypt(nonce, sealed, _chunk_aad(self._header, index, last))
            except InvalidTag:
                raise BackupError(f"chunk {index} of the archive is damaged or was altered") from None
            if last:
                return
            index += 1


def _read_header(source: IO[bytes], ring: KekRing) -> tuple[dict[str, Any], bytes, bytes]:
    """The parsed header, its raw bytes (bound into every chunk's AAD) and the unwrapped backup key."""
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupError("not a portal backup")
    (length,) = struct.unpack(">I", source.read(4))
    raw = source.read(length)
    header = json.loads(raw)
    try:
        key = ring.unwrap(header["kek_id"], base64.b64decode(header["wrapped_key"]))
    except Exception as exc:
        raise BackupError(f"the backup key cannot be unwrapped with this installation's KEK ({exc})") from None
    return header, raw, key


def read_summary(path: Path, ring: KekRing) -> dict[str, Any]:
    """Check an archive end to end without restoring it; returns its header and row counts."""
    with path.open("rb") as source:
        header, raw, key = _read_header(source, ring)
        counts: dict[str, int] = {}
        with gzip.GzipFile(fileobj=_ChunkOpener(source, key, raw)) as stream:
            for line in stream:
                record = json.loads(line)
                if "trailer" in record:
                    counts = record["trailer"]
    return {"revision": header.get("revision"), "created_at": header.get("created_at"), "rows": counts}
