"""The data commands: records import, audit verify/checkpoint, keys rotate/retire/destroy, backups, demo."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import text

from portal.__main__ import cli
from portal.container import Portal
from portal.demo import seed_demo
from portal.records.synthetic import generate_patient_bundle
from portal.settings import Settings


def _env(settings: Settings) -> dict[str, str]:
    return {
        "PORTAL_DATA_DIR": str(settings.data_dir),
        "PORTAL_DATABASE_URL": settings.database_url,
        "PORTAL_KEYSTORE_URL": settings.keystore_url,
        "PORTAL_ORIGIN": settings.origin,
    }


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=_env(settings))
    return result.exit_code, result.output


def test_records_import_accepts_a_bundle_and_rejects_a_bad_one(portal: Portal, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(generate_patient_bundle(8, size="small", today=date(2026, 11, 1))))
    code, output = _invoke(portal.settings, "records", "import", str(good))
    assert code == 0 and "created patient" in output
    bad_bundle = generate_patient_bundle(9, size="small", today=date(2026, 11, 1))
    bad_bundle["entry"][0]["resource"]["birthDate"] = "yesterday"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_bundle))
    code, output = _invoke(portal.settings, "records", "import", str(bad))
    assert code != 0
    assert "entry[0] birthDate" in output and "nothing was stored" in output
    not_json = tmp_path / "x.json"
    not_json.write_text("{nope")
    code, output = _invoke(portal.settings, "records", "import", str(not_json))
    assert code != 0 and "is not JSON" in output


def test_audit_verify_passes_then_names_tampering(portal: Portal) -> None:
    for seed in (10, 12):
        portal.records.import_bundle(
            generate_patient_bundle(seed, size="small", today=date(2026, 11, 1)), actor="system:test"
        )
    code, output = _invoke(portal.settings, "audit", "checkpoint")
    assert code == 0 and "verifier key:" in output
    code, output = _invoke(portal.settings, "audit", "verify")
    assert code == 0 and "ledger verified" in output
    code, output = _invoke(portal.settings, "audit", "verify", "--workers", "1")
    assert code == 0 and "ledger verified" in output
    code, output = _invoke(portal.settings, "audit", "verify", "--workers", "0")
    assert code == 2 and "--workers" in output
    with portal.db.engine.begin() as conn:
        if portal.db.is_sqlite:
            conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))
        else:
            conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER USER"))
        conn.execute(text("DELETE FROM ledger_entries WHERE seq = 0"))
    code, output = _invoke(portal.settings, "audit", "verify")
    assert code == 1 and "FAILED: entry 0 is missing (deleted)" in output


def test_keys_rotate_retire_and_destroy(portal: Portal) -> None:
    result = portal.records.import_bundle(
        generate_patient_bundle(11, size="small", today=date(2026, 11, 1)), actor="system:test"
    )
    old = portal.keys.ring.current_id
    code, output = _invoke(portal.settings, "keys", "rotate")
    assert code == 0 and "rotated" in output
    code, output = _invoke(portal.settings, "keys", "retire", old)
    assert code == 0 and f"{old} retired" in output
    code, output = _invoke(
        portal.settings, "keys", "destroy", "--patient", result.patient_id, "--category", "nonsense", "--reason", "test"
    )
    assert code != 0 and "unknown category" in output
    code, output = _invoke(
        portal.settings, "keys", "destroy", "--patient", result.patient_id, "--category", "clinical", "--reason", "test"
    )
    assert code == 0 and "destroyed 1 key version" in output


def test_backup_create_check_and_restore_into_empty(portal: Portal, tmp_path: Path) -> None:
    portal.records.import_bundle(
        generate_patient_bundle(13, size="small", today=date(2026, 11, 1)), actor="system:test"
    )
    archive = tmp_path / "x.backup"
    code, output = _invoke(portal.settings, "backup", "create", "--output", str(archive))
    assert code == 0 and archive.exists()
    code, output = _invoke(portal.settings, "backup", "check", str(archive))
    assert code == 0 and "archive intact" in output
    code, output = _invoke(portal.settings, "backup", "restore", str(archive))
    assert code != 0 and "not empty" in output


def test_demo_seeds_once(portal: Portal) -> None:
    lines = list(seed_demo(portal, patients=3, large=0))
    assert lines[0].startswith("demo: imported 3 synthetic patients")
    assert any(line.startswith("demo former patient") for line in lines)
    assert list(seed_demo(portal, patients=3, large=0)) == ["demo: 4 patients already present; not seeding again"]


def test_periodic_checkpoint_runs_as_a_job(portal: Portal) -> None:
    from portal.audit.ledger import AuditEvent

    portal.ledger.record(AuditEvent(action="test", actor="system"))
    watchdog = portal.watchdog()
    sent: list[str] = []
    portal.jobs.connect_sender(lambda job_id, delay: sent.append(job_id))
    watchdog.tick()
    assert len(sent) == 3, "a checkpoint, the daily access-log retention sweep and the hourly requests tick"
    for job_id in sent:
        assert portal.jobs.run(job_id)
    assert portal.ledger.checkpoints()[-1].tree_size == 1
