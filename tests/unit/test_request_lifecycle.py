"""The request state machine (``lifecycle.step``) under random action sequences, and the deadlines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from portal.dsar import deadlines
from portal.dsar.lifecycle import (
    APPROVALS_REQUIRED,
    FINAL,
    LABELS,
    TRANSITIONS,
    Action,
    Kind,
    Snapshot,
    Status,
    TransitionError,
    is_final,
    step,
)

OFFICERS = (None, "", "olivia", "oscar", "otto")
# Statuses that mean the work was allowed to go ahead: reaching them needs the approval rule met.
GO_AHEAD = frozenset({Status.approved, Status.processing, Status.completed, Status.partially_completed})
WORK_DONE_OR_RUNNING = frozenset({Status.processing, Status.completed, Status.partially_completed})
# Cancelling and declining end a request at once: drawn less often, so long runs reach completion too.
ENDING = (Action.cancel, Action.deny)
WEIGHTED_ACTIONS = [action for action in Action if action not in ENDING] * 4 + list(ENDING)


class LifecycleMachine(RuleBasedStateMachine):
    """Random actions by random officers (the same one twice, none at all) on one request.

    The machine keeps its own record of what succeeded (approvals, the automatic approval, the
    extension) and checks the snapshot against it after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = Snapshot(Kind.export, Status.submitted)
        self.approved_by: set[str] = set()
        self.auto_approved = False
        self.extensions = 0
        self.went_ahead = False

    @initialize(kind=st.sampled_from(Kind))
    def submit(self, kind: Kind) -> None:
        self.snapshot = Snapshot(kind, Status.submitted)

    @rule(action=st.sampled_from(WEIGHTED_ACTIONS), officer=st.sampled_from(OFFICERS))
    def act(self, action: Action, officer: str | None) -> None:
        self._apply(action, officer)

    @rule(officer=st.sampled_from(OFFICERS[2:]))
    def approve(self, officer: str) -> None:
        """Approvals by real officers, more often than a uniform draw gives (erasures need two)."""
        self._apply(Action.approve, officer)

    def _apply(self, action: Action, officer: str | None) -> None:
        before = self.snapshot
        kept = Snapshot(before.kind, before.status, frozenset(before.approvers), before.extended)
        try:
            after = step(before, action, officer=officer)
        except TransitionError as exc:
            assert str(exc).strip(), f"{action} from {before.status} refused without a reason"
            assert before == kept, "a refused step changed the snapshot"
            assert self._refusal_expected(before, action, officer), (
                f"{action} by {officer!r} from {before} was refused: {exc}"
            )
            return
        assert not is_final(before.status), f"{action} was accepted from the final status {before.status}"
        assert after.kind is before.kind
        assert before == kept, "step must not mutate its input"
        if action is Action.approve:
            assert officer and officer not in before.approvers
            assert after.approvers == before.approvers | {officer}
            self.approved_by.add(officer)
        else:
            assert after.approvers == before.approvers, f"{action} changed the approvers"
        if action is Action.auto_approve:
            assert before.kind is Kind.export
            self.auto_approved = True
        if action is Action.extend:
            self.extensions += 1
            assert after.status is before.status and after.extended
        else:
            assert after.extended == before.extended
        if after.status in GO_AHEAD:
            self.went_ahead = True
        event(f"reached {after.kind} {after.status}")
        self.snapshot = after

    def _refusal_expected(self, before: Snapshot, action: Action, officer: str | None) -> bool:
        if before.status not in TRANSITIONS[action]:
            return True
        if action is Action.approve:
            return not officer or officer in before.approvers
        if action is Action.auto_approve:
            return before.kind is not Kind.export
        if action is Action.extend:
            return before.extended
        return False

    @invariant()
    def status_is_a_status(self) -> None:
        assert isinstance(self.snapshot.status, Status)
        assert self.snapshot.status in LABELS

    @invariant()
    def approvers_are_exactly_the_successful_approvals(self) -> None:
        assert self.snapshot.approvers == frozenset(self.approved_by)

    @invariant()
    def no_work_without_approval(self) -> None:
        if self.snapshot.status not in GO_AHEAD and not self.went_ahead:
            return
        if self.snapshot.kind is Kind.erasure:
            assert not self.auto_approved, "an erasure was approved automatically"
            assert len(self.approved_by) >= APPROVALS_REQUIRED[Kind.erasure] == 2, (
                f"an erasure reached {self.snapshot.status} with approvals from {sorted(self.approved_by)}"
            )
        else:
            assert self.auto_approved or len(self.approved_by) >= APPROVALS_REQUIRED[Kind.export] == 1

    @invariant()
    def extended_at_most_once(self) -> None:
        assert self.extensions <= 1
        assert self.snapshot.extended == (self.extensions == 1)

    @invariant()
    def final_statuses_accept_nothing(self) -> None:
        if not is_final(self.snapshot.status):
            return
        for action in Action:
            for officer in OFFICERS:
                with pytest.raises(TransitionError):
                    step(self.snapshot, action, officer=officer)


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


snapshots = st.builds(
    Snapshot,
    kind=st.sampled_from(Kind),
    status=st.sampled_from(Status),
    approvers=st.frozensets(st.sampled_from(["olivia", "oscar", "otto"]), max_size=3),
    extended=st.booleans(),
)


@given(snapshot=snapshots, action=st.sampled_from(Action), officer=st.sampled_from(OFFICERS))
def test_any_step_from_any_snapshot_is_a_real_status_or_a_reasoned_refusal(
    snapshot: Snapshot, action: Action, officer: str | None
) -> None:
    """Also from snapshots no real sequence reaches (e.g. approvers recorded on a fresh request)."""
    try:
        after = step(snapshot, action, officer=officer)
    except TransitionError as exc:
        assert str(exc).strip()
        return
    assert snapshot.status not in FINAL
    assert isinstance(after.status, Status)
    if after.status in WORK_DONE_OR_RUNNING:
        assert snapshot.status in {Status.approved, Status.processing}
    if action is Action.approve and after.status is Status.approved:
        assert len(after.approvers) >= APPROVALS_REQUIRED[snapshot.kind]


def test_every_transition_targets_a_real_status_and_every_action_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Action)
    for action, targets in TRANSITIONS.items():
        assert targets, f"{action} is allowed from nowhere"
        for source, target in targets.items():
            assert isinstance(source, Status) and isinstance(target, Status), (action, source, target)
            assert source not in FINAL, f"{action} leaves the final status {source}"
    assert {s for s in Status if is_final(s)} == FINAL
    assert set(LABELS) == set(Status)


def test_only_start_enters_processing_and_only_from_approved() -> None:
    entering = {(a, s) for a, t in TRANSITIONS.items() for s, target in t.items() if target is Status.processing}
    assert entering == {(Action.start, Status.approved), (Action.extend, Status.processing)}


@pytest.mark.parametrize("kind", list(Kind))
def test_the_happy_path(kind: Kind) -> None:
    snapshot = step(Snapshot(kind, Status.submitted), Action.verify)
    snapshot = step(snapshot, Action.approve, officer="olivia")
    if kind is Kind.erasure:
        assert snapshot.status is Status.in_review, "one approval is not enough for an erasure"
        with pytest.raises(TransitionError, match="second, different officer"):
            step(snapshot, Action.approve, officer="olivia")
        snapshot = step(snapshot, Action.approve, officer="oscar")
    assert snapshot.status is Status.approved
    snapshot = step(step(snapshot, Action.start), Action.complete)
    assert snapshot.status is Status.completed


def test_automatic_approval_is_for_exports_only() -> None:
    verified = Snapshot(Kind.erasure, Status.verified)
    with pytest.raises(TransitionError, match="only exports"):
        step(verified, Action.auto_approve)
    assert step(Snapshot(Kind.export, Status.verified), Action.auto_approve).status is Status.approved


def test_an_approval_needs_an_officer() -> None:
    with pytest.raises(TransitionError, match="needs the officer"):
        step(Snapshot(Kind.export, Status.in_review), Action.approve, officer=None)


# ---------------------------------------------------------------------- deadlines


def _at(year: int, month: int, day: int, hour: int = 9) -> datetime:
    return datetime(year, month, day, hour, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (_at(2025, 1, 31), 1, _at(2025, 2, 28)),
        (_at(2024, 1, 31), 1, _at(2024, 2, 29)),  # leap year
        (_at(2000, 1, 31), 1, _at(2000, 2, 29)),  # divisible by 400: leap
        (_at(2100, 1, 31), 1, _at(2100, 2, 28)),  # divisible by 100 only: not leap
        (_at(2025, 12, 31), 1, _at(2026, 1, 31)),  # across the year
        (_at(2025, 12, 15), 3, _at(2026, 3, 15)),
        (_at(2025, 11, 30), 3, _at(2026, 2, 28)),
        (_at(2024, 2, 29), 12, _at(2025, 2, 28)),
        (_at(2024, 2, 29), 48, _at(2028, 2, 29)),
        (_at(2025, 3, 31), 1, _at(2025, 4, 30)),
        (_at(2025, 1, 31), 3, _at(2025, 4, 30)),  # GDPR one month plus the two-month extension
        (_at(2025, 3, 31), -1, _at(2025, 2, 28)),
        (_at(2025, 6, 15), 0, _at(2025, 6, 15)),
    ],
)
def test_add_months(start: datetime, months: int, expected: datetime) -> None:
    assert deadlines.add_months(start, months) == expected


@given(
    when=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 12, 31)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    months=st.integers(min_value=0, max_value=36),
)
def test_add_months_keeps_the_day_or_takes_the_months_last_and_keeps_the_time(when: datetime, months: int) -> None:
    later = deadlines.add_months(when, months)
    assert (later.year * 12 + later.month) - (when.year * 12 + when.month) == months
    assert later.day == when.day or (later.day < when.day and (later + timedelta(days=1)).month != later.month)
    assert (later.hour, later.minute, later.second, later.microsecond, later.tzinfo) == (
        when.hour,
        when.minute,
        when.second,
        when.microsecond,
        when.tzinfo,
    )
    assert later >= when


def test_compute_one_month_against_thirty_days() -> None:
    received = _at(2025, 1, 31)
    due = deadlines.compute(received, paused=timedelta(0), extended=False)
    assert due.gdpr == _at(2025, 2, 28)
    assert due.hipaa == _at(2025, 3, 2)
    assert (due.stricter, due.stricter_law) == (due.gdpr, "GDPR")


def test_compute_with_the_extension() -> None:
    received = _at(2025, 1, 31)
    due = deadlines.compute(received, paused=timedelta(0), extended=True)
    assert due.gdpr == _at(2025, 4, 30)  # 1 + 2 months
    assert due.hipaa == _at(2025, 4, 1)  # 30 + 30 days
    assert (due.stricter, due.stricter_law) == (due.hipaa, "HIPAA")


def test_compute_moves_both_clocks_by_the_pause() -> None:
    received = _at(2025, 7, 1)
    plain = deadlines.compute(received, paused=timedelta(0), extended=False)
    paused = deadlines.compute(received, paused=timedelta(days=3, hours=4), extended=False)
    assert paused.gdpr - plain.gdpr == timedelta(days=3, hours=4)
    assert paused.hipaa - plain.hipaa == timedelta(days=3, hours=4)
    both = deadlines.compute(received, paused=timedelta(days=3), extended=True)
    assert both.gdpr == _at(2025, 10, 4)
    assert both.hipaa == _at(2025, 8, 30) + timedelta(days=3)


def test_in_july_thirty_days_is_stricter_than_a_month() -> None:
    due = deadlines.compute(_at(2025, 7, 1), paused=timedelta(0), extended=False)
    assert due.hipaa == _at(2025, 7, 31) < due.gdpr == _at(2025, 8, 1)
    assert due.stricter_law == "HIPAA"


def test_equal_deadlines_name_gdpr() -> None:
    due = deadlines.compute(_at(2025, 4, 1), paused=timedelta(0), extended=False)  # April has 30 days
    assert due.gdpr == due.hipaa == _at(2025, 5, 1)
    assert due.stricter_law == "GDPR"


@given(
    received=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    paused=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
)
def test_the_extension_and_pauses_only_move_deadlines_later(received: datetime, paused: timedelta) -> None:
    plain = deadlines.compute(received, paused=timedelta(0), extended=False)
    later = deadlines.compute(received, paused=paused, extended=True)
    assert later.gdpr >= plain.gdpr and later.hipaa >= plain.hipaa
    assert later.hipaa - received == timedelta(days=60) + paused
    assert plain.hipaa - received == timedelta(days=30)
    assert timedelta(days=28) <= plain.gdpr - received <= timedelta(days=31)


@pytest.mark.parametrize(
    ("due_in", "expected"),
    [
        (timedelta(days=-1), "overdue"),
        (timedelta(0), "overdue"),
        (timedelta(seconds=1), "soon"),
        (timedelta(days=7), "soon"),
        (timedelta(days=7, seconds=1), "ok"),
        (timedelta(days=40), "ok"),
    ],
)
def test_colour(due_in: timedelta, expected: str) -> None:
    now = _at(2025, 3, 10)
    assert deadlines.colour(now + due_in, now) == expected
