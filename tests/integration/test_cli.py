"""The portal command: help on every level and the migration commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from portal.__main__ import cli
from portal.settings import Settings


@pytest.mark.parametrize("args", [[], ["run"], ["worker"], ["db"], ["db", "upgrade"], ["db", "current"]])
def test_help_on_every_level(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_db_upgrade_current_downgrade(settings: Settings, tmp_path: Path) -> None:
    env = {
        "PORTAL_DATA_DIR": str(settings.data_dir),
        "PORTAL_DATABASE_URL": settings.database_url,
        "PORTAL_KEYSTORE_URL": settings.keystore_url,
    }
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    runner = CliRunner()
    assert "empty" in runner.invoke(cli, ["db", "current"], env=env).output
    assert runner.invoke(cli, ["db", "upgrade"], env=env).exit_code == 0
    assert "up to date" in runner.invoke(cli, ["db", "current"], env=env).output
    assert runner.invoke(cli, ["db", "downgrade", "base"], env=env).exit_code == 0
    assert "empty" in runner.invoke(cli, ["db", "current"], env=env).output


def test_bad_setting_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["db", "current"], env={"PORTAL_WEB_PROCESSES": "lots"})
    assert result.exit_code != 0
    assert "PORTAL_WEB_PROCESSES must be a number" in result.output


def test_worker_refuses_the_memory_broker(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["worker"], env={"PORTAL_DATA_DIR": str(tmp_path)})
    assert result.exit_code != 0
    assert "memory://" in result.output
