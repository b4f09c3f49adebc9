"""The line reader shares big batches with a helper process, and a batch never depends on the helper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from portal.access.reading import MIN_LINES_TO_SHARE, LineReader, Read, read_line, read_lines
from tests.support.balp import balp_event

HELPER_START_SECONDS = 30.0
ROOT = Path(__file__).resolve().parents[2]


def reader_pids(lines: Sequence[bytes]) -> list[Read]:
    """Which process read each line (the helper imports this function by name)."""
    return [f"{os.getpid()}:{raw.decode()}" for raw in lines]


@pytest.fixture
def reader() -> Iterator[LineReader]:
    made = LineReader(read=reader_pids)
    yield made
    made.close()


def lines(count: int) -> list[bytes]:
    return [str(n).encode() for n in range(count)]


def read_with_helper(reader: LineReader, batch: list[bytes]) -> list[Read]:
    """Read until the helper (started by the first big batch, which does not wait for it) takes part."""
    deadline = time.monotonic() + HELPER_START_SECONDS
    while True:
        read = reader.read(batch)
        if {str(item).split(":")[0] for item in read} != {str(os.getpid())}:
            return read
        if time.monotonic() > deadline:
            pytest.fail("the helper never took part")
        time.sleep(0.05)


def test_a_big_batch_is_read_half_here_half_in_the_helper(reader: LineReader) -> None:
    batch = lines(2 * MIN_LINES_TO_SHARE + 1)
    read = read_with_helper(reader, batch)
    here, helper = read[:MIN_LINES_TO_SHARE], read[MIN_LINES_TO_SHARE:]
    assert {str(item).split(":")[0] for item in here} == {str(os.getpid())}
    assert len({str(item).split(":")[0] for item in helper}) == 1
    assert [str(item).split(":")[1] for item in read] == [str(n) for n in range(len(batch))]  # order kept


def test_a_small_batch_is_read_here(reader: LineReader) -> None:
    read_with_helper(reader, lines(MIN_LINES_TO_SHARE))
    small = reader.read(lines(MIN_LINES_TO_SHARE - 1))
    assert {str(item).split(":")[0] for item in small} == {str(os.getpid())}


def test_a_dead_helper_costs_no_line_and_is_replaced(reader: LineReader) -> None:
    batch = lines(2 * MIN_LINES_TO_SHARE)
    first = read_with_helper(reader, batch)
    helper_pid = int(str(first[-1]).split(":")[0])
    os.kill(helper_pid, signal.SIGKILL)
    time.sleep(0.2)
    after = reader.read(batch)
    assert [str(item).split(":")[1] for item in after] == [str(n) for n in range(len(batch))]
    again = read_with_helper(reader, batch)
    assert int(str(again[-1]).split(":")[0]) not in (helper_pid, os.getpid())


def test_the_helper_reads_lines_as_this_process_does() -> None:
    """Real AuditEvent lines, good and bad, read with and without the helper: the same facts and reasons."""
    good = [json.dumps(balp_event(f"e{n}", f"MRN-{n}")).encode() for n in range(MIN_LINES_TO_SHARE)]
    bad = [b"{not json", json.dumps({"resourceType": "Patient"}).encode(), json.dumps(balp_event("", "MRN-1")).encode()]
    batch = [line for pair in zip(good, bad * len(good), strict=False) for line in pair]
    shared = LineReader()
    try:
        deadline = time.monotonic() + HELPER_START_SECONDS
        shared.read(batch)  # starts the helper
        while shared._ready_helper() is None:
            assert time.monotonic() < deadline, "the helper never became ready"
            time.sleep(0.05)
        assert shared.read(batch) == read_lines(batch)
    finally:
        shared.close()
    assert read_line(b"{not json") == "the line is not JSON"
    assert read_line(bad[1]) == "not a FHIR AuditEvent"


@pytest.mark.parametrize("main_module", ["portal.__main__", "tests.bench._server"])
def test_the_helper_starts_light_where_the_portal_runs(main_module: str) -> None:
    """A spawned helper first imports the main module of the process that starts it: for ``portal run``
    and the benchmarks' server that module must not load the app, or each web process's helper would
    spend 2.3 s of CPU and 150 MB loading it before it could read a line."""
    heavy = ("portal.app", "portal.container", "litestar", "weasyprint")
    code = f"import sys, {main_module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert imported.stdout.strip() == ""
