"""Load from wrk (Debian package ``wrk``), a load generator written in C, for the HTTP benchmarks.

The httpx generator of the benchmarks costs about 1 to 1.5 ms of CPU per request on the same two cores
as the server; wrk costs a few microseconds, so the server's own ceiling shows. wrk checks only
the status codes (non-2xx are counted as errors); the httpx phases check every answer's content.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

WRK_THREADS = 2

# Each wrk thread walks the calls from its own offset; ``done`` prints one JSON line of figures.
_SCRIPT = """
local calls = {calls}
local host = {host}
local counter = 0
function setup(thread)
  thread:set("counter", counter)
  counter = counter + math.floor(#calls / {threads})
end
request = function()
  counter = counter % #calls + 1
  local call = calls[counter]
  local headers = {{Host = host}}
  for name, value in pairs(call[2]) do headers[name] = value end
  return wrk.format("GET", call[1], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {{"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    cpu_seconds: float  # wrk's own CPU (user + system)

    @property
    def per_second(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def _lua_headers(headers: Mapping[str, str]) -> str:
    return "{" + ",".join(f"[{_lua_string(name)}]={_lua_string(value)}" for name, value in headers.items()) + "}"


def run_wrk(
    base_url: str, host: str, calls: Sequence[tuple[str, Mapping[str, str]]], *, connections: int, seconds: float
) -> WrkResult:
    """``connections`` keep-alive connections, closed loop, for ``seconds``; calls are (path, headers), in turn."""
    table = "{" + ",".join(f"{{{_lua_string(path)},{_lua_headers(headers)}}}" for path, headers in calls) + "}"
    script = _SCRIPT.format(calls=table, host=_lua_string(host), threads=WRK_THREADS)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        completed = subprocess.run(
            [
                "wrk",
                f"-t{WRK_THREADS}",
                f"-c{connections}",
                f"-d{seconds:.0f}s",
                "--timeout",
                "30s",
                "-s",
                handle.name,
                base_url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        Path(handle.name).unlink()
    line = next(line for line in completed.stdout.splitlines() if line.startswith("WRK "))
    figures = json.loads(line[4:])
    errors = sum(figures[k] for k in ("non_2xx", "connect", "read", "write", "timeout"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(
        requests=figures["requests"],
        seconds=figures["seconds"],
        p50_ms=figures["p50_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        max_ms=figures["max_us"] / 1e3,
        errors=errors,
        cpu_seconds=cpu,
    )
