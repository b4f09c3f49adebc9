"""Compliance reports for the privacy admin: DSAR metrics for a period, and the GDPR Art. 30 record."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select

from portal.access.chart import weekly_chart
from portal.consent.models import ConsentPurpose
from portal.db import Database
from portal.dsar.export import to_csv
from portal.dsar.lifecycle import Status
from portal.dsar.models import DataRequest, Recipient
from portal.dsar.service import RequestService
from portal.evidence.models import RegulatorRecipient
from portal.evidence.pack import closed_at, deadline_outcome, iso
from portal.pdf import PdfRenderer
from portal.records.categories import BY_CODE, CATEGORIES

COMPLETED = (Status.completed, Status.partially_completed)
ERASED_REASON = "(reason erased with the patient's request data)"
SECURITY_MEASURES = (
    "Patient data encrypted per patient and data category (AES-256-GCM); keys wrapped by a key-encryption key "
    "kept in a separate key store",
    "Passkey (WebAuthn) sign-in with user verification; device-bound passkeys for staff; step-up for sensitive acts",
    "Role-based access, deny by default; row-level security on PostgreSQL",
    "Append-only audit ledger (RFC 9162 Merkle tree) with signed checkpoints",
    "TLS 1.2+ in transit; strict security headers; encrypted, integrity-checked backups",
    "Cryptographic erasure: destroying a category key makes every copy, including backups, unreadable",
)


@dataclass(frozen=True)
class LateRequest:
    id: str
    kind: str
    due_at: datetime
    answered_at: datetime | None
    outcome: str  # missed | overdue


@dataclass(frozen=True)
class Metrics:
    start: date
    end: date
    received: int
    completed: int
    denied: int
    denied_by_reason: dict[str, int]
    extended: int
    cancelled: int
    still_open: int
    median_days: float | None
    mean_days: float | None
    late: list[LateRequest]
    months: list[str]
    series: dict[str, list[int]]

    def rows(self) -> list[dict[str, Any]]:
        """metric, value pairs (the CSV); denials get one row per reason."""
        rows: list[dict[str, Any]] = [
            {"metric": "period start", "value": self.start.isoformat()},
            {"metric": "period end", "value": self.end.isoformat()},
            {"metric": "requests received", "value": self.received},
            {"metric": "requests completed", "value": self.completed},
            {"metric": "requests denied", "value": self.denied},
            *({"metric": f"denied: {reason}", "value": n} for reason, n in sorted(self.denied_by_reason.items())),
            {"metric": "requests extended", "value": self.extended},
            {"metric": "requests cancelled", "value": self.cancelled},
            {"metric": "requests still open", "value": self.still_open},
            {"metric": "median days to complete", "value": _days(self.median_days)},
            {"metric": "mean days to complete", "value": _days(self.mean_days)},
            {"metric": "late requests", "value": len(self.late)},
        ]
        return rows


class ComplianceReports:
    def __init__(
        self, *, db: Database, requests: RequestService, pdf: PdfRenderer, controller: str, contact: str
    ) -> None:
        self.db = db
        self.requests = requests
        self.pdf = pdf
        self.controller = controller
        self.contact = contact

    # ------------------------------------------------------------------ DSAR metrics

    def dsar_metrics(self, start: date, end: date, now: datetime) -> Metrics:
        """Requests received in [start, end] and what became of them (as of ``now``)."""
        with self.db.read() as session:
            received = list(
                session.scalars(
                    select(DataRequest)
                    .where(DataRequest.submitted_at >= _midnight(start), DataRequest.submitted_at < _midnight(end, 1))
                    .order_by(DataRequest.submitted_at)
                )
            )
        completed = [r for r in received if r.status in COMPLETED and r.completed_at is not None]
        denied = [r for r in received if r.status == Status.denied]
        durations = [((r.completed_at or r.submitted_at) - r.submitted_at).total_seconds() / 86_400 for r in completed]
        late = [
            LateRequest(r.id, r.kind, r.due_at, closed_at(r), outcome)
            for r in received
            if (outcome := deadline_outcome(r, now)) in ("missed", "overdue")
        ]
        months, series = _monthly(received, start, end)
        return Metrics(
            start=start,
            end=end,
            received=len(received),
            completed=len(completed),
            denied=len(denied),
            denied_by_reason=dict(Counter(self._denial_reason(r.id) for r in denied)),
            extended=sum(1 for r in received if r.extended),
            cancelled=sum(1 for r in received if r.status == Status.cancelled),
            still_open=sum(1 for r in received if deadline_outcome(r, now) in ("open", "overdue")),
            median_days=statistics.median(durations) if durations else None,
            mean_days=statistics.fmean(durations) if durations else None,
            late=late,
            months=months,
            series=series,
        )

    def _denial_reason(self, request_id: str) -> str:
        """The reason given with the denial (the text of the "deny" step), as the patient was told it."""
        view = self.requests.view(request_id)
        reasons = [item.text for item in view.timeline if item.action == "deny"]
        return (reasons[-1] if reasons else None) or ERASED_REASON

    @staticmethod
    def chart(metrics: Metrics) -> str:
        return weekly_chart(metrics.months, metrics.series)

    @staticmethod
    def metrics_csv(metrics: Metrics) -> bytes:
        return to_csv(metrics.rows())

    # ------------------------------------------------------------------ GDPR Art. 30 record

    def processing_record(self, now: datetime) -> dict[str, Any]:
        """The record of processing activities, generated from the purposes, categories and recipients."""
        with self.db.read() as session:
            purposes = list(session.scalars(select(ConsentPurpose).where(ConsentPurpose.active.is_(True))))
            recipients = list(session.scalars(select(Recipient).where(Recipient.active.is_(True))))
            regulators = list(session.scalars(select(RegulatorRecipient).where(RegulatorRecipient.active.is_(True))))
        return {
            "type": "record-of-processing-activities",
            "legal_reference": "GDPR Art. 30(1)",
            "controller": {"name": self.controller, "contact": self.contact},
            "generated": iso(now),
            "activities": [_core_activity(), *(_purpose_activity(p) for p in sorted(purposes, key=lambda p: p.code))],
            "recipients": [
                *({"name": r.name, "kind": "recipient of patient data", "contact": r.contact} for r in recipients),
                *({"name": r.authority, "kind": "supervisory authority", "contact": r.contact} for r in regulators),
            ],
            "retention": [_retention(code) for code in BY_CODE],
            "security_measures": list(SECURITY_MEASURES),
        }

    def processing_record_pdf(self, record: dict[str, Any]) -> bytes:
        return self.pdf.render("processing_record.html", record=record)


def _core_activity() -> dict[str, Any]:
    return {
        "name": "Patient privacy portal",
        "purpose": "Let patients see and control their data: access history, consents, exports and erasure; "
        "answer their requests and prove it to regulators",
        "lawful_basis": "GDPR Art. 6(1)(c) and 9(2)(h); HIPAA 45 CFR 164.524, 164.526, 164.528",
        "data_subjects": ["patients", "staff of the privacy office"],
        "data_categories": [category.title for category in CATEGORIES],
        "recipients": [],
        "transfers": "none outside the controller",
        "retention": "per data category, see the retention table",
    }


def _purpose_activity(purpose: ConsentPurpose) -> dict[str, Any]:
    return {
        "name": purpose.title,
        "code": purpose.code,
        "purpose": purpose.summary,
        "lawful_basis": purpose.lawful_basis,
        "consent_mode": purpose.mode,
        "data_subjects": ["patients who agreed" if purpose.mode == "opt-in" else "patients who did not object"],
        "data_categories": [BY_CODE[code].title if code in BY_CODE else code for code in purpose.category_list],
        "recipients": purpose.recipient_list,
        "transfers": purpose.jurisdiction,
        "retention": "per data category, see the retention table",
    }


def _retention(code: str) -> dict[str, Any]:
    category = BY_CODE[code]
    retention = category.retention
    return {
        "category": category.code,
        "title": category.title,
        "years": retention.years if retention else None,
        "counted_from": retention.anchor if retention else None,
        "basis": retention.basis if retention else "Kept until the patient asks for erasure",
    }


def _midnight(day: date, plus_days: int = 0) -> datetime:
    return datetime.combine(day + timedelta(days=plus_days), time(), tzinfo=UTC)


def _monthly(requests: list[DataRequest], start: date, end: date) -> tuple[list[str], dict[str, list[int]]]:
    """Per month of receipt: how many were completed, declined, or neither (yet); the bars stack to 'received'."""
    months: list[str] = []
    cursor = start.replace(day=1)
    while cursor <= end:
        months.append(f"{cursor:%Y-%m}")
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    series = {name: [0] * len(months) for name in ("Completed", "Declined", "Open or cancelled")}
    for request in requests:
        index = months.index(f"{request.submitted_at:%Y-%m}")
        if request.status in COMPLETED:
            series["Completed"][index] += 1
        elif request.status == Status.denied:
            series["Declined"][index] += 1
        else:
            series["Open or cancelled"][index] += 1
    return months, series


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"
