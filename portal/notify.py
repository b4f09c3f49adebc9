"""Notifications by e-mail through a durable outbox.

A notification is a job (written in the same transaction as the change it reports) naming an
account and a template; the job resolves the address and delivers: to SMTP in production, or
as an .eml file under ``var/outbox/`` in the embedded mode. Messages carry no health data, only
a pointer to the portal.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session

from portal.jobs.service import JobContext, JobRunner
from portal.settings import Settings

log = structlog.get_logger("portal.notify")

NOTIFY_JOB = "notify.email"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"


class Notifier:
    def __init__(self, settings: Settings, jobs: JobRunner) -> None:
        self.settings = settings
        self.jobs = jobs
        self._address_of: Callable[[str], str | None] = lambda _account_id: None
        # Plain-text mail: HTML escaping would corrupt it, and nothing here is rendered as HTML.
        self._templates = Environment(
            loader=FileSystemLoader(TEMPLATES),
            undefined=StrictUndefined,
            autoescape=False,  # noqa: S701
            keep_trailing_newline=True,
        )
        jobs.register(NOTIFY_JOB, self._deliver)

    def use_address_book(self, address_of: Callable[[str], str | None]) -> None:
        """Where an account's messages go (the account service knows; it is built after the notifier)."""
        self._address_of = address_of

    def notify(self, session: Session, account_id: str, template: str, key: str, **params: str) -> None:
        """Queue a message in the caller's transaction; ``key`` makes the same notice one message."""
        self.jobs.enqueue(
            session,
            NOTIFY_JOB,
            {"account_id": account_id, "template": template, "params": params},
            idempotency_key=f"{NOTIFY_JOB}:{template}:{account_id}:{key}",
        )

    def notify_address(self, session: Session, address: str, template: str, key: str, **params: str) -> None:
        """Queue a message to an outside party (e.g. a downstream recipient told of an erasure)."""
        self.jobs.enqueue(
            session,
            NOTIFY_JOB,
            {"address": address, "template": template, "params": params},
            idempotency_key=f"{NOTIFY_JOB}:{template}:{address}:{key}",
        )

    def _deliver(self, ctx: JobContext) -> Mapping[str, Any]:
        address = ctx.payload.get("address") or self._address_of(str(ctx.payload["account_id"]))
        if not address:
            log.warning("notify.no_address", template=ctx.payload["template"])
            return {"delivered": False, "reason": "no address on file"}
        message = self.render(address, str(ctx.payload["template"]), dict(ctx.payload["params"]), ctx.job_id)
        if self.settings.smtp_url:
            _send_smtp(self.settings.smtp_url, message)
        else:
            outbox = self.settings.data_dir / "outbox"
            outbox.mkdir(parents=True, exist_ok=True)
            (outbox / f"{ctx.job_id}.eml").write_bytes(bytes(message))
        return {"delivered": True}

    def render(self, address: str, template: str, params: Mapping[str, str], message_id: str) -> EmailMessage:
        text = self._templates.get_template(f"{template}.txt").render(
            origin=self.settings.origin, controller=self.settings.controller_name, **params
        )
        subject, _, body = text.partition("\n\n")
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = address
        message["Subject"] = subject.removeprefix("Subject: ").strip()
        message["Message-ID"] = make_msgid(idstring=message_id[:8], domain=urlsplit(self.settings.origin).hostname)
        message.set_content(body)
        return message


def _send_smtp(url: str, message: EmailMessage) -> None:
    """smtp://host:port or smtps://user:password@host:port (STARTTLS is used when offered on smtp://)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or (465 if parts.scheme == "smtps" else 25)
    client: smtplib.SMTP = (
        smtplib.SMTP_SSL(host, port, timeout=30) if parts.scheme == "smtps" else smtplib.SMTP(host, port, timeout=30)
    )
    with client:
        if parts.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls()
        if parts.username:
            client.login(parts.username, parts.password or "")
        client.send_message(message)
