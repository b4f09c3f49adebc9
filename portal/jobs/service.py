"""Background jobs: written in the caller's transaction, claimed by compare-and-set, re-sent by a watchdog.

The queue message carries only the job id and is sent after commit, so a rolled-back change
never starts work and a lost message only delays it: the watchdog re-sends queued jobs whose
message has not been acted on, and jobs whose worker died (lease expired). A duplicate message
finds the job already claimed or finished and does nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.db import Database, after_commit, utcnow
from portal.jobs.models import Job, JobStatus

log = structlog.get_logger("portal.jobs")

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class JobContext:
    job_id: str
    kind: str
    payload: Mapping[str, Any]
    attempt: int


JobHandler = Callable[[JobContext], Mapping[str, Any] | None]


class Sender(Protocol):
    def __call__(self, job_id: str, delay_seconds: float) -> None: ...


class UnknownJobKindError(LookupError):
    pass


@dataclass
class JobRunner:
    """Owns every state change of the jobs table."""

    db: Database
    lease_seconds: int = 600
    max_attempts: int = 5
    resend_after_seconds: float = 60.0
    clock: Callable[[], datetime] = utcnow
    handlers: dict[str, JobHandler] = field(default_factory=dict)
    _sender: Sender | None = None

    def register(self, kind: str, handler: JobHandler) -> None:
        self.handlers[kind] = handler

    def connect_sender(self, sender: Sender) -> None:
        self._sender = sender

    def enqueue(
        self,
        session: Session,
        kind: str,
        payload: Mapping[str, Any],
        idempotency_key: str,
        *,
        not_before: datetime | None = None,
    ) -> Job:
        """Add a job in the caller's transaction; its message goes out only after commit.

        The same idempotency key returns the existing job instead of adding a second one. A job
        ``not_before`` a later time waits in the table; the watchdog sends it when it is due.
        """
        if kind not in self.handlers:
            raise UnknownJobKindError(kind)
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return existing
        now = self.clock()
        job = Job(
            kind=kind,
            payload=dict(payload),
            idempotency_key=idempotency_key,
            max_attempts=self.max_attempts,
            run_after=max(now, not_before or now),
            last_sent_at=now,
            created_at=now,
            updated_at=now,
        )
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            # Lost a race with another enqueue of the same key: theirs stands.
            return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one()
        job_id = job.id
        delay = (job.run_after - now).total_seconds()
        after_commit(session, lambda: self._send(job_id, delay))
        return job

    def run(self, job_id: str) -> bool:
        """Claim and run one job; False when another worker has it or it is already done."""
        claim = self._claim(job_id)
        if claim is None:
            log.info("job.skip", job_id=job_id)
            return False
        job, token = claim
        if job.attempts > job.max_attempts:
            self._finish(job_id, token, JobStatus.failed, error="gave up after too many attempts")
            return False
        handler = self.handlers.get(job.kind)
        context = JobContext(job_id=job.id, kind=job.kind, payload=job.payload, attempt=job.attempts)
        started = self.clock()
        try:
            if handler is None:
                raise UnknownJobKindError(job.kind)
            result = handler(context)
        except Exception as exc:
            self._fail(job, token, exc)
            return False
        self._finish(job_id, token, JobStatus.succeeded, result=dict(result or {}))
        log.info(
            "job.done",
            job_id=job_id,
            kind=job.kind,
            attempt=job.attempts,
            ms=round((self.clock() - started).total_seconds() * 1000, 1),
        )
        return True

    def resend_due(self) -> int:
        """Re-send jobs whose message was lost or whose worker died; returns how many."""
        now = self.clock()
        stale_send = now - timedelta(seconds=self.resend_after_seconds)
        due = or_(
            and_(
                Job.status == JobStatus.queued,
                Job.run_after <= now,
                or_(Job.last_sent_at.is_(None), Job.last_sent_at < stale_send),
            ),
            and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
        )
        with self.db.write() as session:
            ids = list(session.scalars(select(Job.id).where(due).limit(500)))
            if ids:
                session.execute(update(Job).where(Job.id.in_(ids)).values(last_sent_at=now))
        for job_id in ids:
            self._send(job_id, 0.0)
        if ids:
            log.warning("job.resent", count=len(ids))
        return len(ids)

    def find(self, idempotency_key: str) -> Job | None:
        with self.db.read() as session:
            return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).first()

    def get(self, job_id: str) -> Job | None:
        with self.db.read() as session:
            return session.get(Job, job_id)

    def _send(self, job_id: str, delay_seconds: float) -> None:
        if self._sender is None:
            # No broker in this process (e.g. a CLI command): the watchdog will send it.
            log.info("job.unsent", job_id=job_id)
            return
        try:
            self._sender(job_id, delay_seconds)
        except Exception:
            # The row is committed; the watchdog re-sends it, so the work is not lost.
            log.exception("job.send_failed", job_id=job_id)

    def _claim(self, job_id: str) -> tuple[Job, str] | None:
        now = self.clock()
        token = str(uuid.uuid4())
        claimable = or_(
            and_(Job.status == JobStatus.queued, Job.run_after <= now),
            and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
        )
        with self.db.write() as session:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, claimable)
                .values(
                    status=JobStatus.running,
                    attempts=Job.attempts + 1,
                    claim_token=token,
                    lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job = session.get(Job, job_id, populate_existing=True)
            assert job is not None
            return job, token

    def _finish(
        self,
        job_id: str,
        token: str,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = self.clock()
        with self.db.write() as session:
            finished = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.claim_token == token)
                .values(
                    status=status,
                    result=result,
                    last_error=error,
                    finished_at=now,
                    updated_at=now,
                    claim_token=None,
                    lease_expires_at=None,
                )
                .execution_options(synchronize_session=False)
            )
        if finished.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("job.lease_lost", job_id=job_id)

    def _fail(self, job: Job, token: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        if job.attempts >= job.max_attempts:
            log.error("job.failed", job_id=job.id, kind=job.kind, attempt=job.attempts, error=type(exc).__name__)
            self._finish(job.id, token, JobStatus.failed, error=error)
            return
        now = self.clock()
        delay = min(2**job.attempts, 300)
        with self.db.write() as session:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.claim_token == token)
                .values(
                    status=JobStatus.queued,
                    last_error=error,
                    claim_token=None,
                    lease_expires_at=None,
                    run_after=now + timedelta(seconds=delay),
                    last_sent_at=now,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
        log.warning(
            "job.retry", job_id=job.id, kind=job.kind, attempt=job.attempts, delay=delay, error=type(exc).__name__
        )
        self._send(job.id, float(delay))
