"""The ``portal`` command: run the portal, its workers, and its maintenance tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import click

from portal import migrate
from portal.settings import Settings, SettingsError


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
def run(host: str, port: int) -> None:
    """Start the web portal (embedded mode: SQLite, in-process worker, generated keys)."""
    import uvicorn

    from portal.app import create_app
    from portal.container import build_portal
    from portal.logging import configure_logging

    settings = _settings()
    problems = settings.problems()
    if problems:
        raise click.ClickException("refusing to start: " + "; ".join(problems))
    configure_logging(settings.log_level, json=settings.log_json)
    portal = build_portal(settings)
    _migrate_or_refuse(settings)
    app = create_app(settings, portal)
    click.echo(f"Portal running at {settings.origin}/ (listening on {host}:{port}); press Ctrl+C to stop.")
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=True,
        proxy_headers=settings.is_production,
        forwarded_allow_ips="127.0.0.1",
    )


def _migrate_or_refuse(settings: Settings) -> None:
    """Embedded mode migrates by itself; production must run ``portal db upgrade`` deliberately."""
    if not settings.is_production:
        migrate.upgrade(settings.database_url)
        return
    from portal.db import create_db_engine

    engine = create_db_engine(settings.database_url)
    try:
        if not migrate.is_current(engine):
            raise click.ClickException("the database is not at the latest migration; run `portal db upgrade`")
    finally:
        engine.dispose()


@cli.command()
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
def worker(processes: int, threads: int) -> None:
    """Run Dramatiq worker processes for the scaled mode (PORTAL_BROKER_URL=redis://...)."""
    from portal.container import build_portal
    from portal.logging import configure_logging
    from workers.embedded import Watchdog

    settings = _settings()
    if settings.uses_memory_broker:
        raise click.ClickException("PORTAL_BROKER_URL is memory://: `portal run` already runs the jobs")
    configure_logging(settings.log_level, json=settings.log_json)
    portal = build_portal(settings)
    portal.connect_broker()
    watchdog = Watchdog(portal.jobs, settings.watchdog_interval_seconds)
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
    """Apply migrations up to REVISION (default: head)."""
    migrate.upgrade(_settings().complete().database_url, revision)
    click.echo(f"database upgraded to {revision}")


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


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="portal")


if __name__ == "__main__":
    main()
