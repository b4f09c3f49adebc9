"""Notifications: delivered through the durable outbox, to files (embedded) or a real SMTP server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from portal.container import Portal
from portal.jobs.models import Job
from portal.notify import Notifier
from tests.support.accounts import new_patient


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _queue_staff_notice(portal: Portal) -> str:
    portal.accounts.create_staff("officer@example.org", "privacy_officer", "Olivia", actor="system:test")
    staff = portal.accounts.staff_accounts()[0]
    portal.jobs.connect_sender(lambda job_id, delay: None)
    with portal.db.write() as session:
        portal.notifier.notify(session, staff.id, "new_passkey", key="k1", name="Work laptop")
    with portal.db.read() as session:
        return session.scalars(select(Job.id).where(Job.kind == "notify.email")).one()


def test_embedded_mode_writes_the_message_to_the_outbox(portal: Portal) -> None:
    job_id = _queue_staff_notice(portal)
    assert portal.jobs.run(job_id)
    message = message_from_bytes((portal.settings.data_dir / "outbox" / f"{job_id}.eml").read_bytes())
    assert message["To"] == "officer@example.org"
    assert message["Subject"] == "A new passkey was added to your account"
    assert "Work laptop" in message.get_payload()


def test_production_mode_sends_through_a_real_smtp_server(portal: Portal, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    settings = replace(portal.settings, smtp_url=f"smtp://127.0.0.1:{port}")
    portal.notifier = Notifier(settings, portal.jobs)
    portal.notifier.use_address_book(portal.accounts.contact_address)
    job_id = _queue_staff_notice(portal)
    assert portal.jobs.run(job_id)
    deadline = time.monotonic() + 5
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(inbox.messages) == 1
    assert inbox.messages[0]["Subject"] == "A new passkey was added to your account"


def test_patient_messages_go_to_the_address_in_their_record_and_hold_no_health_data(portal: Portal) -> None:
    mrn, _ = new_patient(portal)
    portal.accounts.invite_patient(mrn, actor="system:test")
    patient_id = portal.records.find_by_mrn(mrn)
    assert patient_id is not None
    account = portal.accounts.account_for_patient(patient_id)
    assert account is not None
    address = portal.accounts.contact_address(account.id)
    assert address is not None and address.endswith("@example.org")
    message = portal.notifier.render(address, "recovery_code_used", {}, "m1")
    body = message.get_payload()
    assert "This message contains no health information." in body
    assert mrn not in body
    reads = portal.ledger.entries_for_subject(patient_id, actions=["records.read"])
    assert any(entry["actor"] == "system:notifier" for entry in reads), "the address look-up is itself logged"
