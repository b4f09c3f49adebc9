"""The real portal under uvicorn in its own process, for the HTTP benchmarks (bench_access, bench_consent)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from portal.serving import serve, served_options
from portal.settings import Settings
from tests.support.procfs import TCP_ESTABLISHED, socket_inodes, spawned_children, tcp_inodes

if TYPE_CHECKING:
    from litestar import Litestar

SERVER_MODULE = "tests.bench._server"
SERVER_START_TIMEOUT_S = 60.0


def server_app() -> Litestar:
    """The uvicorn app factory of the server process: the real app, from ``PORTAL_*`` settings.

    The app is imported here, not with this module: a web process's line-reading helper (spawned)
    imports the main module, and in ``portal run`` that is the light ``portal.__main__``. Importing
    the whole app there took 2.3 s of CPU from the benchmark's first rounds."""
    from portal.app import create_app

    return create_app()


def main() -> None:
    """Serve ``server_app`` on 127.0.0.1:PORT from WORKERS processes as ``portal run`` does (argv: PORT WORKERS)."""
    port, workers = (int(arg) for arg in sys.argv[1:3])
    serve(
        f"{SERVER_MODULE}:server_app",
        host="127.0.0.1",
        port=port,
        processes=workers,
        log_level="warning",
        **served_options(Settings.from_env()),
    )


def server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_") or k.startswith("PORTAL_TEST_")}
    env.update(
        {
            "PORTAL_ENV": settings.env,
            "PORTAL_DATA_DIR": str(settings.data_dir),
            "PORTAL_DATABASE_URL": settings.database_url,
            "PORTAL_KEYSTORE_URL": settings.keystore_url,
            "PORTAL_ORIGIN": settings.origin,
            "PORTAL_BROKER_URL": settings.broker_url,
        }
    )
    return env


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"  # the origin's host: the request gate refuses others

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def app_ms(self, start: int, end: int) -> list[float]:
        """The ``ms`` of the request log lines (RequestLogMiddleware) written between two offsets."""
        with self.log_path.open("rb") as log:
            log.seek(start)
            chunk = log.read(end - start)
        found = []
        for line in chunk.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entry = json.loads(line)
                if entry.get("event") == "http.request":
                    found.append(float(entry["ms"]))
        return found

    def connections_by_process(self) -> list[int]:
        """How many connections each web process holds open to clients, fewest first."""
        established = tcp_inodes(self.port, TCP_ESTABLISHED)
        processes = spawned_children(self.process.pid) or [self.process.pid]
        return sorted(len(socket_inodes(pid) & established) for pid in processes)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (runs the lifespan exit)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def live_server(settings: Settings, port: int, log_dir: Path, workers: int = 1) -> Iterator[LiveServer]:
    """The real app under uvicorn (``workers`` processes; one as deployed by default) on 127.0.0.1:``port``."""
    log_path = log_dir / f"uvicorn-{time.monotonic_ns()}.log"
    argv = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        str(port),
        str(workers),
    ]
    root = Path(__file__).resolve().parents[2]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=root, env=server_env(settings), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(process, port, log_path)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with code {process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/healthz", headers={"host": server.host}, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not answer /healthz within {SERVER_START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    main()
