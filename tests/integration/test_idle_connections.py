"""``portal run`` keeps an idle keep-alive connection open longer than clients and proxies keep theirs.

Whichever side times out first closes an idle connection. If it is the portal, a request the client
sends at that moment is reset and fails without ever reaching the portal. uvicorn's default of 5 s
equals httpx's pool timeout and is far below a proxy's (nginx: 60 s for upstream connections).
"""

from __future__ import annotations

import http.client
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import ORIGIN
from tests.integration.test_requests_crash import REPO, _child_env, _free_port, _process_settings, _wait
from tests.support.procfs import interrupt_and_wait

UVICORN_DEFAULT_KEEP_ALIVE_S = 5
IDLE_S = UVICORN_DEFAULT_KEEP_ALIVE_S + 1.5
HOST = urlsplit(ORIGIN).netloc


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path, headers={"host": HOST})
    response = conn.getresponse()
    response.read()
    return response.status


def answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        return _get(conn, "/readyz") == 200
    except OSError:
        return False
    finally:
        conn.close()


def _still_open(sock: socket.socket) -> bool:
    """Not closed by the other side: a closed socket is readable, and reads as end of file."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable or sock.recv(1, socket.MSG_PEEK) != b""


def assert_idle_connection_is_kept(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        assert _get(conn, "/readyz") == 200
        sock = conn.sock
        assert sock is not None
        time.sleep(IDLE_S)
        assert _still_open(sock), f"the portal closed a connection idle for {IDLE_S} s"
        assert _get(conn, "/readyz") == 200
        assert conn.sock is sock  # answered on the same connection, not a new one
    finally:
        conn.close()


def test_embedded_run_keeps_an_idle_connection_open_past_uvicorns_default(tmp_path: Path) -> None:
    settings = _process_settings(tmp_path, broker_url="memory://")
    port = _free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "portal", "run", "--port", str(port)],
            cwd=REPO,
            env=_child_env(settings),
            stdout=out,
            stderr=out,
        )
    try:
        _wait("the portal to answer", lambda: process.poll() is None and answers(port), 60)
        assert_idle_connection_is_kept(port)
    finally:
        interrupt_and_wait(process)
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
