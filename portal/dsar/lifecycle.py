"""The request state machine: one transition table, and the approval rule (four-eyes for erasure).

``step`` is pure: the service loads a request, asks ``step`` for the next snapshot inside the
transaction that holds the row lock, and writes it. Nothing else decides a status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Kind(enum.StrEnum):
    export = "export"
    erasure = "erasure"


class Status(enum.StrEnum):
    submitted = "submitted"
    verified = "verified"
    awaiting_patient = "awaiting_patient"
    in_review = "in_review"
    approved = "approved"
    denied = "denied"
    processing = "processing"
    completed = "completed"
    partially_completed = "partially_completed"
    cancelled = "cancelled"


class Action(enum.StrEnum):
    verify = "verify"  # the patient's step-up at submission
    review = "review"  # an officer takes the request
    ask_patient = "ask_patient"  # pauses the clock
    patient_reply = "patient_reply"
    approve = "approve"
    auto_approve = "auto_approve"  # exports only, when the admin policy allows it
    deny = "deny"
    extend = "extend"
    start = "start"  # a worker begins
    complete = "complete"
    complete_partially = "complete_partially"  # some categories kept under a legal obligation
    cancel = "cancel"


S = Status
OPEN_FOR_DECISION = (S.verified, S.in_review, S.awaiting_patient)
BEFORE_PROCESSING = (S.submitted, *OPEN_FOR_DECISION, S.approved)
FINAL = frozenset({S.denied, S.completed, S.partially_completed, S.cancelled})

TRANSITIONS: dict[Action, dict[Status, Status]] = {
    Action.verify: {S.submitted: S.verified},
    Action.review: {S.verified: S.in_review},
    Action.ask_patient: {S.verified: S.awaiting_patient, S.in_review: S.awaiting_patient},
    Action.patient_reply: {S.awaiting_patient: S.in_review},
    # A first erasure approval leaves the request in review; see ``_approve``.
    Action.approve: {S.verified: S.approved, S.in_review: S.approved},
    Action.auto_approve: {S.verified: S.approved},
    Action.deny: dict.fromkeys(OPEN_FOR_DECISION, S.denied),
    Action.extend: {status: status for status in (*OPEN_FOR_DECISION, S.approved, S.processing)},
    Action.start: {S.approved: S.processing},
    Action.complete: {S.processing: S.completed},
    Action.complete_partially: {S.processing: S.partially_completed},
    Action.cancel: dict.fromkeys(BEFORE_PROCESSING, S.cancelled),
}

APPROVALS_REQUIRED = {Kind.export: 1, Kind.erasure: 2}

LABELS = {
    S.submitted: "Submitted",
    S.verified: "Identity confirmed, waiting for review",
    S.awaiting_patient: "Waiting for your reply",
    S.in_review: "In review",
    S.approved: "Approved",
    S.denied: "Declined",
    S.processing: "Being carried out",
    S.completed: "Completed",
    S.partially_completed: "Completed, some data kept by law",
    S.cancelled: "Cancelled",
}


class TransitionError(ValueError):
    """A step the lifecycle does not allow; the message is safe to show."""


@dataclass(frozen=True)
class Snapshot:
    kind: Kind
    status: Status
    approvers: frozenset[str] = frozenset()
    extended: bool = False


def step(snapshot: Snapshot, action: Action, *, officer: str | None = None) -> Snapshot:
    """The request after ``action``, or TransitionError saying why it cannot happen."""
    targets = TRANSITIONS[action]
    if snapshot.status not in targets:
        raise TransitionError(f"this request is {LABELS[snapshot.status].lower()}, so it cannot be {_PAST[action]} now")
    if action is Action.approve:
        return _approve(snapshot, officer)
    if action is Action.auto_approve and snapshot.kind is not Kind.export:
        raise TransitionError("only exports can be approved automatically")
    if action is Action.extend:
        if snapshot.extended:
            raise TransitionError("a request can be extended only once")
        return replace(snapshot, extended=True)
    return replace(snapshot, status=targets[snapshot.status])


def _approve(snapshot: Snapshot, officer: str | None) -> Snapshot:
    if not officer:
        raise TransitionError("an approval needs the officer who gives it")
    if officer in snapshot.approvers:
        raise TransitionError("you have already approved this request; a second, different officer must approve it")
    approvers = snapshot.approvers | {officer}
    if len(approvers) < APPROVALS_REQUIRED[snapshot.kind]:
        return replace(snapshot, status=S.in_review, approvers=approvers)
    return replace(snapshot, status=S.approved, approvers=approvers)


def is_final(status: Status) -> bool:
    return status in FINAL


_PAST = {
    Action.verify: "verified",
    Action.review: "taken for review",
    Action.ask_patient: "paused for a question",
    Action.patient_reply: "answered",
    Action.approve: "approved",
    Action.auto_approve: "approved automatically",
    Action.deny: "declined",
    Action.extend: "extended",
    Action.start: "started",
    Action.complete: "completed",
    Action.complete_partially: "completed",
    Action.cancel: "cancelled",
}
