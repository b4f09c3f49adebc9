"""``portal run`` in the scaled mode starts PORTAL_WEB_PROCESSES web processes, each with its own app, and
keeps idle connections open as the embedded mode does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.test_idle_connections import assert_idle_connection_is_kept
from tests.integration.test_requests_crash import REPO, _child_env, _free_port, _scaled_settings, _wait
from tests.support.procfs import interrupt_and_wait, spawned_children
from tests.support.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.pg

WEB_PROCESSES = 2


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, headers={"host": "portal.test"}, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_serves_from_the_configured_number_of_web_processes(
    tmp_path: Path, pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    settings = _scaled_settings(tmp_path, pg_server, redis_server, "scaled")
    env = {**_child_env(settings), "PORTAL_WEB_PROCESSES": str(WEB_PROCESSES)}
    port = _free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "portal", "run", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        _wait("the portal to answer", lambda: process.poll() is None and _answers(url), 60)
        _wait(f"{WEB_PROCESSES} web processes", lambda: len(spawned_children(process.pid)) == WEB_PROCESSES, 30)
        assert all(_answers(url) for _ in range(20))
        assert_idle_connection_is_kept(port)
    finally:
        interrupt_and_wait(process)
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
