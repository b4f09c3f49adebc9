"""What Linux's /proc shows of a server's processes and their sockets (tests and benchmarks of the web
processes)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"


def spawned_children(pid: int) -> list[int]:
    """The children that ``pid`` spawned with multiprocessing (uvicorn's web processes)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(child) for child in path.read_text().split()] if path.exists() else []
    return [child for child in children if b"spawn_main" in cmdline(child)]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets that process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(int(found.group(1)))
    return inodes


def tcp_inodes(port: int, state: str) -> set[int]:
    """The inodes of the IPv4 TCP sockets on local ``port`` in ``state`` (e.g. TCP_LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found.add(int(fields[9]))
    return found


def interrupt_and_wait(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """Stop a server as Ctrl+C does (a graceful shutdown), killing it if that takes over ``timeout`` s;
    returns its exit code."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
