"""The ``portal`` command: run the portal, its workers, and its maintenance tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from portal import migrate
from portal.settings import Settings, SettingsError

if TYPE_CHECKING:
    from portal.container import Portal


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Patient privacy portal.

    Settings come from PORTAL_* environment variables (see the README).
    """


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--demo", is_flag=True, help="Seed a synthetic demo population (once) and print how to use it.")
def run(host: str, port: int, demo: bool) -> None:
    """Start the web portal: embedded mode by default (SQLite, in-process worker, generated keys), or
    PORTAL_WEB_PROCESSES web processes in the scaled mode (PostgreSQL and Redis)."""
    import uvicorn

    from portal.app import create_app
    from portal.container import build_portal
    from portal.logging import configure_logging
    from portal.serving import ListenError, serve, served_options

    settings = _settings()
    problems = settings.problems()
    if problems:
        raise click.ClickException("refusing to start: " + "; ".join(problems))
    configure_logging(settings.log_level, json=settings.log_json)
    portal = build_portal(settings)
    _migrate_or_refuse(settings)
    portal.consent.ensure_defaults()
    if demo:
        from portal.demo import seed_demo

        for line in seed_demo(portal):
            click.echo(line)
    click.echo(f"Portal running at {settings.origin}/ (listening on {host}:{port}); press Ctrl+C to stop.")
    served: dict[str, Any] = {"host": host, "port": port, "log_config": None, **served_options(settings)}
    if settings.web_processes == 1:
        uvicorn.run(create_app(settings, portal), **served)
        return
    # Each web process builds its own app from the same PORTAL_* settings (engines do not cross a fork).
    portal.close()
    try:
        serve("portal.app:create_app", processes=settings.web_processes, **served)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from exc


def _migrate_or_refuse(settings: Settings) -> None:
    """Embedded mode migrates by itself; production must run ``portal db upgrade`` deliberately."""
    if not settings.is_production:
        migrate.upgrade_all(settings.database_url, settings.keystore_url)
        return
    from portal.db import create_db_engine

    for url, schema in ((settings.database_url, migrate.Schema.main), (settings.keystore_url, migrate.Schema.keystore)):
        engine = create_db_engine(url)
        try:
            if not migrate.is_current(engine, schema):
                raise click.ClickException(
                    f"the {schema.name} database is not at the latest migration; run `portal db upgrade`"
                )
        finally:
            engine.dispose()


@cli.command()
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
def worker(processes: int, threads: int) -> None:
    """Run Dramatiq worker processes for the scaled mode (PORTAL_BROKER_URL=redis://...)."""
    from portal.container import build_portal
    from portal.logging import configure_logging

    settings = _settings()
    if settings.uses_memory_broker:
        raise click.ClickException("PORTAL_BROKER_URL is memory://: `portal run` already runs the jobs")
    configure_logging(settings.log_level, json=settings.log_json)
    portal = build_portal(settings)
    portal.connect_broker()
    watchdog = portal.watchdog()
    watchdog.start()
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.entry:setup",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    child = subprocess.Popen(command)  # noqa: S603 - fixed argument list
    stopped = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        stopped.set()
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    watchdog.stop()
    sys.exit(0 if stopped.is_set() else code)


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head) to the main database, and the key store to its head."""
    settings = _settings()
    migrate.upgrade(settings.database_url, revision)
    migrate.upgrade(settings.keystore_url, schema=migrate.Schema.keystore)
    click.echo(f"database upgraded to {revision}; key store upgraded to head")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. -1 or base)."""
    migrate.downgrade(_settings().database_url, revision)
    click.echo(f"database downgraded to {revision}")


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision and whether it is the latest."""
    from portal.db import create_db_engine

    engine = create_db_engine(_settings().database_url)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    state = "up to date" if current == head else f"behind (latest is {head})"
    click.echo(f"{current or 'empty'}: {state}")


@db.command("grant-app-role")
@click.argument("role")
def db_grant_app_role(role: str) -> None:
    """PostgreSQL: give ROLE the app's privileges (no UPDATE/DELETE on the audit ledger)."""
    from portal.db import create_db_engine
    from portal.dbroles import grant_app_role

    engine = create_db_engine(_settings().database_url)
    try:
        grant_app_role(engine, role)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"granted application privileges to {role}; the ledger is append-only for it")


def _portal() -> Portal:
    """The portal's parts for a maintenance command (no web server, no broker)."""
    from portal.container import build_portal
    from portal.logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return build_portal(settings)


@cli.group()
def admin() -> None:
    """Accounts: invitations for patients and staff."""


@admin.command("invite-patient")
@click.option("--mrn", required=True, help="The patient's medical record number.")
def admin_invite_patient(mrn: str) -> None:
    """Print a single-use enrolment link (72 hours) for the patient with this MRN."""
    from portal.accounts.service import AccountError

    portal = _portal()
    try:
        link = portal.accounts.invite_patient(mrn, actor="system:cli")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        portal.close()
    click.echo(link)


@admin.command("create-staff")
@click.option("--role", required=True, type=click.Choice(["privacy_officer", "privacy_admin", "regulator"]))
@click.option("--email", required=True, help="Work e-mail address.")
@click.option("--name", "display_name", required=True, help="The person's name.")
def admin_create_staff(role: str, email: str, display_name: str) -> None:
    """Create a staff account and print its one-time enrolment link (e.g. the first privacy admin)."""
    from portal.accounts.service import AccountError

    portal = _portal()
    try:
        link = portal.accounts.create_staff(email, role, display_name, actor="system:cli")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        portal.close()
    click.echo(link)


@cli.group()
def records() -> None:
    """The patient record store."""


@records.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def records_import(path: Path) -> None:
    """Import a FHIR Bundle (JSON, one patient) all or nothing."""
    from portal.records.service import BundleRejectedError

    try:
        bundle = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from None
    portal = _portal()
    try:
        result = portal.records.import_bundle(bundle, actor="system:cli", role="system")
    except BundleRejectedError as exc:
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise click.ClickException(f"bundle rejected with {len(exc.problems)} problem(s); nothing was stored") from None
    finally:
        portal.close()
    verb = "created" if result.created_patient else "updated"
    click.echo(
        f"{verb} patient {result.patient_id}: {sum(result.counts.values())} resources "
        f"({result.updated} replaced earlier versions)"
    )


@cli.group()
def keys() -> None:
    """The key store: key-encryption key rotation and data-key destruction."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Generate a new key-encryption key and re-wrap every data key under it (no downtime)."""
    portal = _portal()
    try:
        kek_id, count = portal.keys.rotate_kek()
    finally:
        portal.close()
    click.echo(f"key-encryption key rotated to {kek_id}; {count} data keys re-wrapped")


@keys.command("retire")
@click.argument("kek_id")
def keys_retire(kek_id: str) -> None:
    """Remove an old key-encryption key once every key is re-wrapped under the current one."""
    portal = _portal()
    try:
        count = portal.keys.retire_kek(kek_id)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        portal.close()
    click.echo(f"key-encryption key {kek_id} retired ({count} late keys re-wrapped first)")


@keys.command("destroy")
@click.option("--patient", "patient_id", required=True, help="The patient's id.")
@click.option("--category", required=True, help="The data category, e.g. preferences.")
@click.option("--reason", required=True, help="Why (recorded in the audit ledger).")
def keys_destroy(patient_id: str, category: str, reason: str) -> None:
    """Destroy one patient's key for one category: that data becomes unreadable everywhere, for good."""
    from portal.audit.ledger import AuditEvent
    from portal.records.categories import BY_CODE

    if category not in BY_CODE:
        raise click.ClickException(f"unknown category {category!r}; one of {', '.join(BY_CODE)}")
    portal = _portal()
    try:
        destroyed = portal.keys.destroy(patient_id, category, reason=reason)
        portal.ledger.record(
            AuditEvent(
                action="keys.destroy",
                actor="system:cli",
                role="system",
                subject=patient_id,
                object=f"category:{category}",
                details={"versions": destroyed},
            )
        )
    finally:
        portal.close()
    click.echo(f"destroyed {destroyed} key version(s) of {category} for patient {patient_id}")


@cli.group()
def audit() -> None:
    """The tamper-evident audit ledger."""


@audit.command("verify")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="processes recomputing the ledger in parallel (default: one per core; 1 on a busy server)",
)
def audit_verify(workers: int | None) -> None:
    """Recompute the Merkle tree, check every checkpoint, and name the first bad entry."""
    portal = _portal()
    try:
        report = portal.ledger.verify(workers=workers)
    finally:
        portal.close()
    for check in report.checks:
        click.echo(f"ok: {check}")
    for problem in report.problems:
        click.echo(f"FAILED: {problem}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo(f"ledger verified: {report.entries} entries, {report.checkpoints} checkpoints")


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the ledger now and print it."""
    portal = _portal()
    try:
        row = portal.ledger.checkpoint()
        click.echo(row.note, nl=False)
        click.echo(f"verifier key: {portal.ledger.verifier_key()}")
    finally:
        portal.close()


@cli.group()
def evidence() -> None:
    """Evidence packs for regulators."""


@evidence.command("verify")
@click.argument("pack", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fingerprint", help="The portal key fingerprint the regulator was given (spaces optional).")
@click.option(
    "--previous-checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ledger/checkpoint.txt kept from the previous pack: the ledger must extend it.",
)
def evidence_verify(pack: Path, fingerprint: str | None, previous_checkpoint: Path | None) -> None:
    """Check a pack offline exactly as its verify.py does; print each check, exit 1 if any fails."""
    from portal.evidence.verify_pack import main

    options = [f"--fingerprint={fingerprint}"] if fingerprint else []
    options += [f"--previous-checkpoint={previous_checkpoint}"] if previous_checkpoint else []
    raise SystemExit(main([str(pack), *options]))


@cli.group()
def backup() -> None:
    """Encrypted backups of the main database (the key store is never included)."""


@backup.command("create")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Archive path.")
def backup_create(output: Path | None) -> None:
    """Write an encrypted, integrity-checked archive of the main database."""
    from portal.backup import create_backup
    from portal.db import utcnow

    portal = _portal()
    target = output or portal.settings.data_dir / "backups" / f"portal-{utcnow():%Y%m%dT%H%M%SZ}.backup"
    try:
        summary = create_backup(portal.db.engine, portal.keys.ring, target)
    finally:
        portal.close()
    click.echo(f"backup written to {summary.path} ({sum(summary.rows.values())} rows, revision {summary.revision})")


@backup.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_check(path: Path) -> None:
    """Decrypt and check an archive end to end without restoring it."""
    from portal.backup import BackupError, read_summary

    portal = _portal()
    try:
        summary = read_summary(path, portal.keys.ring)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        portal.close()
    click.echo(f"archive intact: revision {summary['revision']}, {sum(summary['rows'].values())} rows")


@backup.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_restore(path: Path) -> None:
    """Restore an archive into the configured (empty) database, migrate it to the latest revision, and
    re-apply every erasure recorded in the erasure ledger so erased data does not come back."""
    from portal.backup import BackupError

    portal = _portal()
    try:
        summary, removed = portal.restore_backup(path)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        portal.close()
    click.echo(f"restored {sum(summary.rows.values())} rows from {path}; re-applied erasures removed {removed} rows")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="portal")


if __name__ == "__main__":
    main()
