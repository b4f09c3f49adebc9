"""Statutory deadlines, side by side: GDPR Art. 12(3) one month (+2 months once) and HIPAA
45 CFR 164.524(b)(2) 30 days (+30 once). Time waiting on the patient does not count."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

GDPR_MONTHS, GDPR_EXTENSION_MONTHS = 1, 2
HIPAA_DAYS, HIPAA_EXTENSION_DAYS = 30, 30


@dataclass(frozen=True)
class Deadlines:
    gdpr: datetime
    hipaa: datetime

    @property
    def stricter(self) -> datetime:
        return min(self.gdpr, self.hipaa)

    @property
    def stricter_law(self) -> str:
        return "GDPR" if self.gdpr <= self.hipaa else "HIPAA"


def add_months(when: datetime, months: int) -> datetime:
    """Same day ``months`` later; a day the month lacks becomes its last day (31 Jan + 1 month = 28/29 Feb)."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def compute(received_at: datetime, *, paused: timedelta, extended: bool) -> Deadlines:
    months = GDPR_MONTHS + (GDPR_EXTENSION_MONTHS if extended else 0)
    days = HIPAA_DAYS + (HIPAA_EXTENSION_DAYS if extended else 0)
    return Deadlines(gdpr=add_months(received_at, months) + paused, hipaa=received_at + timedelta(days=days) + paused)


def colour(due: datetime, now: datetime) -> str:
    """How urgent a deadline looks in the queue: overdue, due within 7 days, or on track."""
    if due <= now:
        return "overdue"
    if due - now <= timedelta(days=7):
        return "soon"
    return "ok"
