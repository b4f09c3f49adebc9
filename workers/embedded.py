"""In-process background work for the single-machine mode: Dramatiq worker threads and the watchdog."""

from __future__ import annotations

import threading

import dramatiq
import structlog

from portal.jobs.service import JobRunner

log = structlog.get_logger("portal.workers")


class Watchdog:
    """Periodically re-sends jobs whose message was lost or whose worker died."""

    def __init__(self, runner: JobRunner, interval_seconds: float) -> None:
        self._runner = runner
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="portal-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._runner.resend_due()
            except Exception:
                # A database hiccup must not kill the watchdog; the next round retries.
                log.exception("watchdog.error")


class EmbeddedWorker:
    """Dramatiq worker threads inside the web process, plus the watchdog."""

    def __init__(self, broker: dramatiq.Broker, runner: JobRunner, threads: int, watchdog_interval: float):
        self._worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        self._watchdog = Watchdog(runner, watchdog_interval)

    def start(self) -> None:
        self._worker.start()
        self._watchdog.start()
        log.info("worker.embedded_started")

    def stop(self) -> None:
        self._watchdog.stop()
        self._worker.stop(timeout=10_000)
        log.info("worker.embedded_stopped")
