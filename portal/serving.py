"""The web processes of the scaled mode: uvicorn's supervisor, with a listening socket for each process.

uvicorn's own processes share one listening socket. Whichever process wakes first accepts every
connection waiting at that moment, so keep-alive connections opened together (a proxy's pool, a load
test) can pile up on one process, which then answers them at twice the latency while the other idles:
26 of 32 connections went to one process in a measured run. Here each process accepts on a socket of its
own, all bound to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections over
them by a hash of the client's address and port. (Linux lets only processes of the same user join such
a group of sockets.)

The supervisor keeps every socket open, so connections that arrive for a process that died wait in
that socket's queue until its replacement accepts them.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from portal.settings import Settings

logger = logging.getLogger("uvicorn.error")


def served_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the portal's web processes, from the settings (the address aside)."""
    return {
        "access_log": False,  # the app logs each request itself (RequestLogMiddleware)
        "server_header": False,
        "date_header": True,
        "proxy_headers": settings.is_production,
        "forwarded_allow_ips": "127.0.0.1",
        # An idle connection is closed by whichever side times out first. When it is the server, a
        # request the client sends at that moment is reset and fails without reaching the portal: 6 in
        # 56,000 signed-in pages under the benchmark's load with uvicorn's default of 5 s, which is also
        # httpx's pool timeout. Outlasting proxies' (nginx: 60 s for upstream connections) and clients'
        # pools leaves the closing to them.
        "timeout_keep_alive": settings.keep_alive_seconds,
    }


def serve(app: str, *, host: str, port: int, processes: int, **options: Any) -> None:
    """Serve the app factory ``app`` ("module:function") from ``processes`` web processes until stopped."""
    if processes == 1:
        uvicorn.run(app, factory=True, host=host, port=port, **options)
        return
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=processes, **options)
    sockets: list[socket.socket] = []
    try:
        for _ in range(processes):
            sockets.append(listening_socket(host, port, config.backlog))
        SocketPerProcess(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()


class ListenError(OSError):
    """The address cannot be listened on (taken by another program, not this machine's, or privileged)."""


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on host:port that other sockets of this user may listen on too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        # Listening here, not first in the process, so no connection waits on a process still starting.
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


class SocketPerProcess(Multiprocess):
    """uvicorn's supervisor (health checks, replacing dead or hung processes, restarting on SIGHUP), where
    process ``i`` serves ``sockets[i]`` alone, and so does any process that replaces it."""

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(len(self.sockets))]

    def keep_subprocess_alive(self) -> None:
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # it may be alive but hung
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # The app or its settings are broken; a replacement would fail the same way.
                logger.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            logger.info("Child process [%s] died", process.pid)
            self.processes[slot] = self._start(slot)

    def restart_all(self) -> None:
        """Replace each process, bringing its replacement into service before retiring it."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                logger.error("Child process [%s] was not ready in time; aborting the restart.", new.pid)
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.sockets[slot]])
        process.start()
        return process
