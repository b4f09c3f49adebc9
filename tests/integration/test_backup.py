"""Encrypted backups: restore reads the same records; damage and wrong keys are refused."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest

from portal import migrate
from portal.access.models import AccessLogVersion
from portal.access.service import TimelineFilter
from portal.backup import BackupError, create_backup, read_summary, restore_backup
from portal.container import Portal, build_portal
from portal.records.synthetic import generate_patient_bundle
from portal.security.crypto import KekRing
from portal.settings import Settings
from tests.support.aio import run_async


def _restore_target(portal: Portal, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a fresh, empty main database that shares the original key store."""
    if portal.db.is_sqlite:
        url = f"sqlite:///{tmp_path / 'restored.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_server").create_database(f"r_{uuid.uuid4().hex[:10]}")
    return Settings(
        data_dir=portal.settings.data_dir,
        origin=portal.settings.origin,
        database_url=url,
        keystore_url=portal.settings.keystore_url,
    ).complete()


def test_restored_backup_reads_the_same_records(portal: Portal, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    result = portal.records.import_bundle(
        generate_patient_bundle(3, size="typical", today=date(2026, 11, 1)), actor="system:test"
    )
    original = portal.records.read(result.patient_id, actor="system:test", purpose="TEST")
    portal.records.read(result.patient_id, actor="patient:me", role=None, purpose="PATRQT", categories=["clinical"])
    portal.ledger.checkpoint()
    archive = tmp_path / "portal.backup"
    summary = create_backup(portal.db.engine, portal.keys.ring, archive)
    assert summary.rows["resources"] == len(original)
    assert summary.rows["access_events"] == 1 and "access_log_versions" not in summary.rows, "derived: rebuilt"
    raw = archive.read_bytes()
    assert b"resources" not in raw and b"Patient" not in raw, "the archive is encrypted"
    assert read_summary(archive, portal.keys.ring)["rows"]["resources"] == len(original)

    target = _restore_target(portal, request, tmp_path)
    restored = build_portal(target)
    try:
        restore_backup(restored.db.engine, restored.keys.ring, archive)
        assert migrate.is_current(restored.db.engine)
        again = restored.records.read(result.patient_id, actor="system:test", purpose="TEST")
        assert [(r.id, r.resource) for r in again] == [(r.id, r.resource) for r in original]
        assert restored.ledger.verify().ok
        with restored.db.read() as session:
            assert session.get(AccessLogVersion, result.patient_id) is not None, "the restore rebuilt the version"
        assert run_async(restored.access.overview, result.patient_id, TimelineFilter()).summary.total == 1
    finally:
        restored.close()


def test_restore_refuses_a_database_that_is_not_empty(portal: Portal, tmp_path: Path) -> None:
    portal.records.import_bundle(generate_patient_bundle(4, size="small", today=date(2026, 11, 1)), actor="system:test")
    archive = tmp_path / "a.backup"
    create_backup(portal.db.engine, portal.keys.ring, archive)
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(portal.db.engine, portal.keys.ring, archive)


@pytest.mark.parametrize("position", ["header", "middle", "end"])
def test_damaged_archive_is_refused(portal: Portal, tmp_path: Path, position: str) -> None:
    portal.records.import_bundle(generate_patient_bundle(5, size="small", today=date(2026, 11, 1)), actor="system:test")
    archive = tmp_path / "b.backup"
    create_backup(portal.db.engine, portal.keys.ring, archive)
    data = bytearray(archive.read_bytes())
    offset = {"header": 30, "middle": len(data) // 2, "end": len(data) - 3}[position]
    data[offset] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises((BackupError, ValueError)):
        read_summary(archive, portal.keys.ring)


def test_truncated_archive_is_refused(portal: Portal, tmp_path: Path) -> None:
    archive = tmp_path / "c.backup"
    create_backup(portal.db.engine, portal.keys.ring, archive)
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(BackupError):
        read_summary(archive, portal.keys.ring)


def test_another_installations_key_cannot_open_it(portal: Portal, tmp_path: Path) -> None:
    archive = tmp_path / "d.backup"
    create_backup(portal.db.engine, portal.keys.ring, archive)
    with pytest.raises(BackupError, match="cannot be unwrapped"):
        read_summary(archive, KekRing.generate())
