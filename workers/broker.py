"""The Dramatiq broker, chosen by ``PORTAL_BROKER_URL``, and the one actor that runs jobs.

Actors are declared on an explicit broker (never Dramatiq's global default, which would
connect to RabbitMQ at import time). Every job goes through ``run_job``: the message holds
only a job id, and the jobs table says what to do.
"""

from __future__ import annotations

from datetime import timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from portal.jobs.service import JobRunner

QUEUE = "portal"
ACTOR = "run_job"


def create_broker(broker_url: str) -> dramatiq.Broker:
    if broker_url.startswith("memory://"):
        broker: dramatiq.Broker = StubBroker()
        # The in-process worker never goes through Dramatiq's CLI, which is what normally
        # emits process_boot; without it the TimeLimit middleware never starts its timer.
        broker.emit_after("process_boot")
        return broker
    return RedisBroker(url=broker_url)  # type: ignore[no-untyped-call]


def declare_job_actor(broker: dramatiq.Broker, runner: JobRunner) -> dramatiq.Actor:  # type: ignore[type-arg]
    """Declare ``run_job`` on ``broker`` and connect the runner's sender to it."""

    def run_job(job_id: str) -> None:
        runner.run(job_id)

    # Retries and deadlines are the jobs table's business; a time limit just under the lease
    # stops a hung job before another worker may legitimately claim it.
    actor = dramatiq.Actor(
        run_job,
        broker=broker,
        actor_name=ACTOR,
        queue_name=QUEUE,
        priority=0,
        options={"max_retries": 0, "time_limit": max(1, runner.lease_seconds - 5) * 1000},
    )

    def send(job_id: str, delay_seconds: float) -> None:
        delay = timedelta(seconds=delay_seconds) if delay_seconds > 0 else None
        actor.send_with_options(args=(job_id,), delay=delay)

    runner.connect_sender(send)
    return actor


def ping(broker: dramatiq.Broker) -> None:
    """Raise when the broker cannot be reached."""
    if isinstance(broker, RedisBroker):
        broker.client.ping()
