"""Shared helpers of the benchmark scripts in ``tests/bench`` (timing, memory, a throwaway portal).

Run the scripts as modules from the repository root so ``tests.*`` imports resolve::

    .venv/bin/python -m tests.bench.bench_ledger [--pg]
    .venv/bin/python -m tests.bench.bench_records [--pg]
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import math
import os
import platform
import pstats
import re
import resource
import socket
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, event, text

from portal import migrate
from portal.container import Portal, build_portal
from portal.settings import Settings
from tests.support.servers import start_postgres

T = TypeVar("T")

ORIGIN = "https://portal.test"
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# ----------------------------------------------------------------------------- timing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ms(seconds: float) -> float:
    return seconds * 1e3


def goal(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 1] (p99 of 1,000 samples is the 990th smallest)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds taken by one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Fastest of ``repeat`` runs in seconds: the one least disturbed by other load."""
    return min(timed(fn)[0] for _ in range(repeat))


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def rss_mib() -> float:
    """Resident memory now (Linux ``VmRSS``), NaN where unavailable."""
    kib = _status_kib("VmRSS")
    return math.nan if kib is None else kib / 1024


def peak_rss_mib() -> float:
    """Peak resident memory since start or the last :func:`reset_peak_rss` (Linux ``VmHWM``)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the lifetime peak (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kib / 1024


_lifetime_peak_mib = 0.0


def lifetime_peak_rss_mib() -> float:
    """Peak resident memory of the whole run, across :func:`reset_peak_rss` calls."""
    return max(_lifetime_peak_mib, peak_rss_mib())


def reset_peak_rss() -> bool:
    """Restart the peak-RSS watermark (Linux >= 4.0), so a phase's own peak can be read."""
    global _lifetime_peak_mib  # noqa: PLW0603 - one process-wide watermark
    _lifetime_peak_mib = lifetime_peak_rss_mib()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def phase_memory() -> Iterator[dict[str, float]]:
    """Measure a block's peak RSS; fills ``peak_mib`` and ``peak_over_start_mib`` on exit."""
    reset_peak_rss()
    found: dict[str, float] = {}
    start = rss_mib()
    try:
        yield found
    finally:
        peak = peak_rss_mib()
        found["peak_mib"] = peak
        found["peak_over_start_mib"] = peak - start


# ----------------------------------------------------------------------------- output


class Reporter:
    """Prints ``<prefix>.<name>=<value>`` lines, one figure each, flushed at once."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def header(self, title: str, **facts: object) -> None:
        print(f"# {title}", flush=True)
        for key, value in facts.items():
            print(f"# {key}: {value}", flush=True)

    def figure(self, name: str, value: float | int | str | bool) -> None:
        print(f"{self.prefix}.{name}={_fmt(value)}", flush=True)

    def note(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"# {line}", flush=True)


def _fmt(value: float | int | str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:,.0f}".replace(",", "_")
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:_}"
    return value


def profile(fn: Callable[[], T], *, top: int = 12, sort: str = "tottime") -> tuple[T, str]:
    """Run ``fn`` under cProfile; its result and the ``top`` functions by ``sort``."""
    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    lines = out.getvalue().splitlines()
    # Keep the table, drop pstats' preamble (timer, ordering, blank lines).
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    table = "\n".join(line for line in lines[start:] if line.strip())
    return result, table


# ----------------------------------------------------------------------------- a throwaway portal


def server_version(portal: Portal) -> str:
    with portal.db.engine.connect() as conn:
        if portal.db.is_sqlite:
            return f"SQLite {conn.execute(text('select sqlite_version()')).scalar()}"
        return f"PostgreSQL {conn.execute(text('show server_version')).scalar()}"


def machine() -> str:
    """CPU, Python and the load average at start (other work on the machine skews the figures)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}"


@dataclass
class BenchPortal:
    portal: Portal
    settings: Settings
    backend: str  # "sqlite" or "postgresql"


@contextlib.contextmanager
def bench_portal(*, pg: bool, **overrides: object) -> Iterator[BenchPortal]:
    """A migrated portal in a temp dir: on SQLite files, or on a throwaway PostgreSQL cluster.

    With ``pg``, ``$PORTAL_TEST_PG_URL`` is used when set (as in the test suite); otherwise a
    cluster is started (fsync off, as for the tests) and removed again at the end.
    ``overrides`` are further ``Settings`` values (``origin=...``, ``erasure_waiting_days=0``).
    """
    # Alembic and the portal log at INFO; the figures are the only output wanted here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmp:
        base = Path(tmp)
        values: dict[str, object] = {"data_dir": base / "var", "origin": ORIGIN}
        with contextlib.ExitStack() as stack:
            if pg:
                server = start_postgres(base / "pg")
                stack.callback(server.stop)
                values["database_url"] = server.create_database("bench")
                values["keystore_url"] = server.create_database("bench_keys")
            values.update(overrides)
            settings = Settings(**values).complete()  # type: ignore[arg-type]
            portal = build_portal(settings)
            stack.callback(portal.close)
            migrate.upgrade_all(settings.database_url, settings.keystore_url)
            yield BenchPortal(portal, settings, "postgresql" if pg else "sqlite")


# ----------------------------------------------------------------------------- profiling


def pstats_table(profiler: cProfile.Profile, sort: str, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(top)
    lines = out.getvalue().splitlines()
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line for line in lines[first:] if line.strip())


@contextlib.contextmanager
def count_statements(engine: Engine) -> Iterator[Counter[str]]:
    """SQL statements sent (by verb) and pool checkouts on one engine while inside."""
    counts: Counter[str] = Counter()

    def on_statement(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        counts["statements"] += 1
        verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else "empty"
        counts[f"{verb}{'_many' if many else ''}"] += 1

    def on_checkout(*_args: Any) -> None:
        counts["checkouts"] += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine.pool, "checkout", on_checkout)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine.pool, "checkout", on_checkout)
