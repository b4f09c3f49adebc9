"""In-process background work for the single-machine mode: Dramatiq worker threads and the watchdog."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import dramatiq
import structlog

from portal.jobs.service import JobRunner

log = structlog.get_logger("portal.workers")

PeriodicTask = tuple[float, Callable[[], object]]


class Watchdog:
    """Re-sends jobs whose message was lost or whose worker died, and runs periodic tasks.

    Periodic tasks only enqueue jobs (with an idempotency key per time slot), so several
    watchdogs in several processes still produce one job per slot.
    """

    def __init__(self, runner: JobRunner, interval_seconds: float, periodic: Sequence[PeriodicTask] = ()) -> None:
        self._runner = runner
        self._interval = interval_seconds
        self._periodic = list(periodic)
        # Due at the first tick: a process that restarts often must still run its daily jobs.
        self._last_run = [float("-inf") for _ in self._periodic]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="portal-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def tick(self) -> None:
        """One round: re-send overdue jobs, then start the periodic tasks that are due."""
        self._runner.resend_due()
        now = time.monotonic()
        for position, (every, task) in enumerate(self._periodic):
            if now - self._last_run[position] >= every:
                self._last_run[position] = now
                task()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:
                # A database hiccup must not kill the watchdog; the next round retries.
                log.exception("watchdog.error")


class EmbeddedWorker:
    """Dramatiq worker threads inside the web process, plus the watchdog."""

    def __init__(self, broker: dramatiq.Broker, watchdog: Watchdog, threads: int) -> None:
        self._worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        self._watchdog = watchdog

    def start(self) -> None:
        self._worker.start()
        self._watchdog.start()
        log.info("worker.embedded_started")

    def stop(self) -> None:
        self._watchdog.stop()
        self._worker.stop(timeout=10_000)
        log.info("worker.embedded_stopped")
