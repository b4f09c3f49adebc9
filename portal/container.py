"""The portal's parts, built from settings in one place and shared by the web app, workers and CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy.orm import Session

from portal.access.cases import CaseService
from portal.access.service import AccessLog
from portal.accounts.passkeys import Ceremonies
from portal.accounts.service import AccountService
from portal.api.service import IntegrationService
from portal.audit.ledger import Ledger
from portal.backup import BackupSummary, restore_backup
from portal.consent.service import ConsentService
from portal.datadir import instance_secret, prepare_data_dir
from portal.db import Database
from portal.dsar.erasure import Eraser
from portal.dsar.export import ExportBuilder
from portal.dsar.service import TICK_JOB, RequestService
from portal.evidence.service import EvidenceService
from portal.hot_reads import HotReads
from portal.jobs.service import JobContext, JobRunner
from portal.notify import Notifier
from portal.pdf import PdfRenderer
from portal.records.service import RecordStore
from portal.security.crypto import EnvKekProvider, FileKekProvider, KekProvider
from portal.security.keystore import KeyStore
from portal.security.ratelimit import RateLimiter
from portal.security.sessions import SessionService
from portal.settings import Settings
from workers.broker import create_broker, declare_job_actor
from workers.embedded import Watchdog

CHECKPOINT_JOB = "audit.checkpoint"
ACCESS_SWEEP_JOB = "access.retention_sweep"
DAY_SECONDS = 86_400.0
HOUR_SECONDS = 3_600.0


@dataclass
class Portal:
    settings: Settings
    db: Database
    keystore_db: Database
    hot: HotReads
    keys: KeyStore
    ledger: Ledger
    records: RecordStore
    jobs: JobRunner
    sessions: SessionService
    limiter: RateLimiter
    notifier: Notifier
    accounts: AccountService
    consent: ConsentService
    access: AccessLog
    cases: CaseService
    pdf: PdfRenderer
    api: IntegrationService
    requests: RequestService
    evidence: EvidenceService
    secret: str
    broker: dramatiq.Broker | None = None

    def connect_broker(self) -> dramatiq.Broker:
        """Create the broker and the job actor; only processes that send or run jobs need it."""
        if self.broker is None:
            self.broker = create_broker(self.settings.broker_url)
            declare_job_actor(self.broker, self.jobs)
        return self.broker

    def request_job(self, kind: str, bucket: str) -> None:
        """Queue a periodic job; the bucket (a time slot) makes repeated requests for one slot one job."""
        with self.db.write() as session:
            self.jobs.enqueue(session, kind, {}, idempotency_key=f"{kind}:{bucket}")

    def watchdog(self) -> Watchdog:
        """The watchdog with the portal's periodic jobs: ledger checkpoints, the access-log retention sweep,
        and the requests' hourly tick (purge expired exports, sweep retained categories)."""
        periodic = [
            (self.settings.checkpoint_interval_seconds, CHECKPOINT_JOB),
            (DAY_SECONDS, ACCESS_SWEEP_JOB),
            (HOUR_SECONDS, TICK_JOB),
        ]
        return Watchdog(
            self.jobs,
            self.settings.watchdog_interval_seconds,
            periodic=[(every, self._periodic(kind, every)) for every, kind in periodic],
        )

    def _periodic(self, kind: str, every: float) -> Callable[[], None]:
        return lambda: self.request_job(kind, str(int(time.time() // every)))

    def restore_backup(self, path: Path) -> tuple[BackupSummary, int]:
        """Restore a backup of the main database, then re-apply the erasure ledger (kept beside the keys,
        never in a backup): an old backup never brings erased data back. Returns the rows removed again."""
        summary = restore_backup(self.db.engine, self.keys.ring, path)
        return summary, self.requests.eraser.reapply_ledger()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        self.access.reader.close()
        self.ledger.close()
        self.db.dispose()
        self.keystore_db.dispose()


def kek_provider(settings: Settings) -> KekProvider:
    if settings.kek:
        return EnvKekProvider(settings.kek)
    return FileKekProvider(settings.data_dir / "keys" / "kek.json")


def build_portal(settings: Settings) -> Portal:
    prepare_data_dir(settings)
    db = Database.from_url(settings.database_url)
    keystore_db = Database.from_url(settings.keystore_url)
    keys = KeyStore(keystore_db, kek_provider(settings))
    ledger = Ledger(db, keys.signing_key, settings.origin)
    hot = HotReads(db)
    jobs = JobRunner(
        db,
        lease_seconds=settings.job_lease_seconds,
        max_attempts=settings.job_max_attempts,
        resend_after_seconds=settings.job_resend_after_seconds,
    )
    records = RecordStore(db, keys, ledger, settings.mrn_system)
    sessions = SessionService(db, hot)
    limiter = RateLimiter(db)
    notifier = Notifier(settings, jobs)
    accounts = AccountService(
        db=db,
        ledger=ledger,
        records=records,
        sessions=sessions,
        limiter=limiter,
        notifier=notifier,
        ceremonies=Ceremonies(db, settings.rp_id, settings.controller_name, settings.origin),
        origin=settings.origin,
    )
    notifier.use_address_book(accounts.contact_address)
    access = AccessLog(
        db=db,
        ledger=ledger,
        records=records,
        keys=keys,
        hot=hot,
        staff_named=settings.staff_named_in_access_history,
        staff_name=accounts.staff_name,
    )
    records.on_read(access.record_portal_read)

    def alert(session: Session, patient_id: str, template: str, key: str) -> None:
        account = accounts.account_for_patient(patient_id)
        if account is not None:
            notifier.notify(session, account.id, template, key=key)

    access.use_alerts(alert)
    consent = ConsentService(
        db=db,
        ledger=ledger,
        records=records,
        keys=keys,
        origin=settings.origin,
        controller=settings.controller_name,
        contact=settings.mail_from,
        hot=hot,
    )
    pdf = PdfRenderer()
    requests = RequestService(
        db=db,
        ledger=ledger,
        keys=keys,
        accounts=accounts,
        access=access,
        notifier=notifier,
        jobs=jobs,
        exporter=ExportBuilder(
            records=records,
            access=access,
            consent=consent,
            pdf=pdf,
            signing_key=keys.signing_key,
            origin=settings.origin,
            controller=settings.controller_name,
        ),
        eraser=Eraser(db=db, keys=keys, ledger=ledger, records=records),
        waiting_days=settings.erasure_waiting_days,
        controller=settings.controller_name,
        contact=settings.mail_from,
    )
    cases = CaseService(db=db, ledger=ledger, access=access)
    evidence = EvidenceService(
        db=db,
        ledger=ledger,
        keys=keys,
        accounts=accounts,
        requests=requests,
        cases=cases,
        jobs=jobs,
        pdf=pdf,
        origin=settings.origin,
        controller=settings.controller_name,
        contact=settings.mail_from,
    )
    portal = Portal(
        settings=settings,
        db=db,
        keystore_db=keystore_db,
        hot=hot,
        keys=keys,
        ledger=ledger,
        records=records,
        jobs=jobs,
        sessions=sessions,
        limiter=limiter,
        notifier=notifier,
        accounts=accounts,
        consent=consent,
        pdf=pdf,
        access=access,
        cases=cases,
        api=IntegrationService(
            db=db, keys=keys, ledger=ledger, records=records, limiter=limiter, origin=settings.origin, hot=hot
        ),
        requests=requests,
        evidence=evidence,
        secret=instance_secret(settings),
    )
    _register_jobs(portal)
    return portal


def _register_jobs(portal: Portal) -> None:
    def checkpoint(_ctx: JobContext) -> dict[str, Any]:
        row = portal.ledger.checkpoint()
        return {"tree_size": row.tree_size}

    portal.jobs.register(CHECKPOINT_JOB, checkpoint)

    def sweep(_ctx: JobContext) -> dict[str, Any]:
        return {"deleted": portal.access.sweep(portal.settings.access_retention_years)}

    portal.jobs.register(ACCESS_SWEEP_JOB, sweep)
