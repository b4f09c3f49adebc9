"""Background jobs: the jobs table is the truth; messages can be lost or duplicated without harm."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import dramatiq
import pytest

from portal.container import Portal
from portal.jobs.models import JobStatus
from portal.jobs.service import JobContext
from tests.conftest import FakeClock
from workers.broker import create_broker, declare_job_actor
from workers.embedded import EmbeddedWorker, Watchdog


class Recorder:
    def __init__(self, fail_times: int = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def __call__(self, ctx: JobContext) -> Mapping[str, Any]:
        with self.lock:
            self.calls[ctx.job_id] += 1
            if self.calls[ctx.job_id] <= self.fail_times:
                raise RuntimeError("transient failure")
        return {"attempt": ctx.attempt}


class Outbox:
    """A sender that keeps messages instead of delivering them, so tests decide what arrives."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, job_id: str, delay_seconds: float) -> None:
        self.sent.append(job_id)


def _enqueue(portal: Portal, key: str = "k1") -> str:
    with portal.db.write() as session:
        return portal.jobs.enqueue(session, "test.record", {"ref": key}, idempotency_key=key).id


def test_message_is_sent_only_after_commit(portal: Portal) -> None:
    outbox = Outbox()
    portal.jobs.register("test.record", Recorder())
    portal.jobs.connect_sender(outbox)
    with pytest.raises(RuntimeError), portal.db.write() as session:
        portal.jobs.enqueue(session, "test.record", {}, idempotency_key="rolled-back")
        assert outbox.sent == []
        raise RuntimeError("the caller's transaction fails")
    assert outbox.sent == []
    job_id = _enqueue(portal)
    assert outbox.sent == [job_id]


def test_same_idempotency_key_gives_the_same_job(portal: Portal) -> None:
    portal.jobs.register("test.record", Recorder())
    portal.jobs.connect_sender(Outbox())
    assert _enqueue(portal, "same") == _enqueue(portal, "same")


def test_lost_message_is_resent_by_the_watchdog_and_runs_once(portal: Portal) -> None:
    clock = FakeClock()
    portal.jobs.clock = clock
    recorder = Recorder()
    portal.jobs.register("test.record", recorder)
    outbox = Outbox()
    portal.jobs.connect_sender(outbox)
    job_id = _enqueue(portal)
    outbox.sent.clear()  # the message is lost
    assert portal.jobs.resend_due() == 0, "not yet overdue"
    clock.advance(seconds=portal.jobs.resend_after_seconds + 1)
    assert portal.jobs.resend_due() == 1
    assert outbox.sent == [job_id]
    assert portal.jobs.run(job_id) is True
    assert portal.jobs.run(job_id) is False, "a duplicate message does nothing"
    assert recorder.calls[job_id] == 1
    job = portal.jobs.get(job_id)
    assert job is not None and job.status == JobStatus.succeeded and job.result == {"attempt": 1}


def test_duplicate_messages_in_parallel_run_the_job_once(portal: Portal) -> None:
    recorder = Recorder()
    portal.jobs.register("test.record", recorder)
    portal.jobs.connect_sender(Outbox())
    job_id = _enqueue(portal)
    threads = [threading.Thread(target=portal.jobs.run, args=(job_id,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.calls[job_id] == 1


def test_failure_is_retried_with_backoff_then_succeeds(portal: Portal) -> None:
    clock = FakeClock()
    portal.jobs.clock = clock
    recorder = Recorder(fail_times=2)
    portal.jobs.register("test.record", recorder)
    portal.jobs.connect_sender(Outbox())
    job_id = _enqueue(portal)
    assert portal.jobs.run(job_id) is False
    job = portal.jobs.get(job_id)
    assert job is not None and job.status == JobStatus.queued and job.last_error == "RuntimeError: transient failure"
    assert portal.jobs.run(job_id) is False, "not before its backoff has passed"
    clock.advance(seconds=2)
    assert portal.jobs.run(job_id) is False
    clock.advance(seconds=4)
    assert portal.jobs.run(job_id) is True
    assert recorder.calls[job_id] == 3


def test_job_fails_for_good_after_max_attempts(portal: Portal) -> None:
    clock = FakeClock()
    portal.jobs.clock = clock
    portal.jobs.register("test.record", Recorder(fail_times=100))
    portal.jobs.connect_sender(Outbox())
    job_id = _enqueue(portal)
    for _ in range(portal.jobs.max_attempts):
        portal.jobs.run(job_id)
        clock.advance(seconds=301)
    job = portal.jobs.get(job_id)
    assert job is not None and job.status == JobStatus.failed and job.attempts == portal.jobs.max_attempts


def test_job_of_a_dead_worker_is_reclaimed_after_its_lease(portal: Portal) -> None:
    """A worker killed mid-job leaves it 'running'; after the lease the watchdog re-sends it."""
    clock = FakeClock()
    portal.jobs.clock = clock
    recorder = Recorder()
    portal.jobs.register("test.record", recorder)
    outbox = Outbox()
    portal.jobs.connect_sender(outbox)
    job_id = _enqueue(portal)
    claim = portal.jobs._claim(job_id)  # the worker claims it, then dies
    assert claim is not None
    assert portal.jobs.run(job_id) is False, "still leased to the dead worker"
    clock.advance(seconds=portal.jobs.lease_seconds + 1)
    outbox.sent.clear()
    assert portal.jobs.resend_due() == 1 and outbox.sent == [job_id]
    assert portal.jobs.run(job_id) is True
    assert recorder.calls[job_id] == 1


def _wait_for(portal: Portal, job_id: str, status: JobStatus, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = portal.jobs.get(job_id)
        if job is not None and job.status == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {status}")


def test_embedded_dramatiq_worker_runs_jobs(portal: Portal) -> None:
    recorder = Recorder(fail_times=1)
    portal.jobs.register("test.record", recorder)
    broker = portal.connect_broker()
    worker = EmbeddedWorker(broker, Watchdog(portal.jobs, 0.2), threads=2)
    worker.start()
    try:
        job_id = _enqueue(portal)
        _wait_for(portal, job_id, JobStatus.succeeded)
    finally:
        worker.stop()
    assert recorder.calls[job_id] == 2, "one failure, retried through a delayed message"


@pytest.mark.pg
def test_redis_broker_runs_jobs_exactly_once_with_a_duplicate(portal: Portal, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_server").url
    broker = create_broker(redis_url)
    broker.flush_all()
    actor = declare_job_actor(broker, portal.jobs)
    recorder = Recorder()
    portal.jobs.register("test.record", recorder)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        job_id = _enqueue(portal)
        actor.send(job_id)  # a duplicate message on top of the one sent after commit
        _wait_for(portal, job_id, JobStatus.succeeded)
        time.sleep(0.5)
    finally:
        worker.stop()
        broker.close()
    assert recorder.calls[job_id] == 1
