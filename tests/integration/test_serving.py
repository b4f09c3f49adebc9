"""The scaled mode's web processes (``portal.serving``): each accepts on a listening socket of its own,
so connections opened together spread over the processes, and a process that dies or is restarted hands
its socket, and the connections waiting on it, to its replacement."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.serving import ListenError, listening_socket, serve
from tests.integration.test_requests_crash import REPO, _free_port, _wait
from tests.support.procfs import TCP_LISTEN, interrupt_and_wait, socket_inodes, spawned_children, tcp_inodes

PROCESSES = 2
CONNECTIONS = 48


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int

    def children(self) -> list[int]:
        return spawned_children(self.process.pid)

    def listening_sockets(self, pid: int) -> set[int]:
        """The inodes of the sockets listening on the port that process ``pid`` holds."""
        return socket_inodes(pid) & tcp_inodes(self.port, TCP_LISTEN)

    def sockets_by_child(self) -> dict[int, set[int]]:
        return {child: self.listening_sockets(child) for child in self.children()}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    code = (
        "from portal.serving import serve; "
        f"serve('tests.support.pid_app:create', host='127.0.0.1', port={port}, processes={PROCESSES}, "
        "lifespan='off', log_level='warning')"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=out, stderr=out)
    served = Served(process, port)
    try:
        _wait("both web processes to answer", lambda: len(_answering(port, 16)) == PROCESSES, 60, interval=0.2)
        yield served
    finally:
        interrupt_and_wait(process)
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


def test_each_web_process_accepts_on_a_listening_socket_of_its_own(served: Served) -> None:
    sockets = served.sockets_by_child()
    assert len(sockets) == PROCESSES
    assert all(len(held) == 1 for held in sockets.values()), sockets
    assert len(set.union(*sockets.values())) == PROCESSES  # no two share one
    # The supervisor keeps them all, for the replacement of a process that dies.
    assert served.listening_sockets(served.process.pid) == set.union(*sockets.values())


def test_fresh_connections_are_spread_over_the_web_processes(served: Served) -> None:
    answers = _answers(served.port, CONNECTIONS)
    assert set(answers) == set(served.children())
    # Kernel hashing, not a race to accept: with 48 connections, a share under 8 has odds below 1 in 10^5.
    assert min(answers.count(pid) for pid in set(answers)) >= 8, answers


def test_a_killed_web_process_is_replaced_on_its_socket_and_its_waiting_connections_are_answered(
    served: Served,
) -> None:
    before = served.sockets_by_child()
    victim = next(iter(before))
    os.kill(victim, signal.SIGKILL)

    # Opened while the process is dead: those hashed to its socket wait there for the replacement.
    answers = _answers(served.port, CONNECTIONS)

    assert victim not in answers
    after = served.sockets_by_child()
    replacement = next(pid for pid in after if pid not in before)
    assert after[replacement] == before[victim]
    assert replacement in answers


def test_a_restart_replaces_every_web_process_on_the_same_sockets(served: Served) -> None:
    before = served.sockets_by_child()
    served.process.send_signal(signal.SIGHUP)

    _wait("every web process to be replaced", lambda: not set(served.children()) & set(before), 60, interval=0.2)
    after = served.sockets_by_child()
    assert sorted(map(sorted, after.values())) == sorted(map(sorted, before.values()))
    assert set(_answers(served.port, CONNECTIONS)) == set(after)


def test_a_port_taken_by_a_socket_that_does_not_share_it_is_refused() -> None:
    port = _free_port()
    with listening_socket("127.0.0.1", port, 8), listening_socket("127.0.0.1", port, 8):
        pass  # a second one may share the port...
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            listening_socket("127.0.0.1", port, 8)  # ...a socket that did not agree to share it may not
        with pytest.raises(ListenError):  # refused before any web process starts
            serve("tests.support.pid_app:create", host="127.0.0.1", port=port, processes=2)


def _answers(port: int, connections: int) -> list[int]:
    """The pids that answered ``connections`` requests, each on a new connection, all opened at once."""
    with ThreadPoolExecutor(connections) as pool:
        return list(pool.map(lambda _: _pid_on_new_connection(port), range(connections)))


def _answering(port: int, connections: int) -> set[int]:
    try:
        return set(_answers(port, connections))
    except OSError:
        return set()


def _pid_on_new_connection(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        return int(response.read())
    finally:
        connection.close()
