"""The portal's parts, built from settings in one place and shared by the web app, workers and CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dramatiq

from portal.datadir import instance_secret, prepare_data_dir
from portal.db import Database
from portal.jobs.service import JobRunner
from portal.security.sessions import SessionService
from portal.settings import Settings
from workers.broker import create_broker, declare_job_actor


@dataclass
class Portal:
    settings: Settings
    db: Database
    jobs: JobRunner
    sessions: SessionService
    secret: str
    broker: dramatiq.Broker | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def connect_broker(self) -> dramatiq.Broker:
        """Create the broker and the job actor; only processes that send or run jobs need it."""
        if self.broker is None:
            self.broker = create_broker(self.settings.broker_url)
            declare_job_actor(self.broker, self.jobs)
        return self.broker

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        self.db.dispose()


def build_portal(settings: Settings) -> Portal:
    prepare_data_dir(settings)
    db = Database.from_url(settings.database_url)
    jobs = JobRunner(
        db,
        lease_seconds=settings.job_lease_seconds,
        max_attempts=settings.job_max_attempts,
        resend_after_seconds=settings.job_resend_after_seconds,
    )
    return Portal(settings=settings, db=db, jobs=jobs, sessions=SessionService(db), secret=instance_secret(settings))
