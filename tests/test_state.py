"""The state machine as pure functions, exhaustively, without a database."""

from __future__ import annotations

import itertools

import pytest

from aioabort import TaskState
from aioabort._state import (
    ABORTABLE_STATES,
    FINISHABLE_STATES,
    RUNNING_STATES,
    TERMINAL_STATES,
    StartDecision,
    after_abort_request,
    decide_start,
    end_state,
    is_allowed,
)

S = TaskState


def test_state_sets_partition_the_states() -> None:
    assert TERMINAL_STATES | RUNNING_STATES | {S.PENDING} == set(S)
    assert not TERMINAL_STATES & RUNNING_STATES
    assert all(s.is_terminal for s in TERMINAL_STATES)
    assert not any(s.is_terminal for s in set(S) - TERMINAL_STATES)


@pytest.mark.parametrize("state", list(S))
def test_abort_request_from_every_state(state: TaskState) -> None:
    expected = {S.PENDING: S.ABORTED, S.STARTED: S.ABORTING}.get(state)
    assert after_abort_request(state) is expected
    assert (state in ABORTABLE_STATES) == (expected is not None)
    if expected is not None:
        assert is_allowed(state, expected)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_never_change(state: TaskState) -> None:
    assert all(not is_allowed(state, new) for new in S)
    assert after_abort_request(state) is None
    assert state not in FINISHABLE_STATES


@pytest.mark.parametrize(("old", "new"), list(itertools.product(list(S), list(S))))
def test_allowed_transitions_table(old: TaskState, new: TaskState) -> None:
    allowed = {
        (S.PENDING, S.STARTED),
        (S.PENDING, S.ABORTED),
        (S.STARTED, S.ABORTING),
        (S.STARTED, S.SUCCESS),
        (S.STARTED, S.FAILURE),
        (S.STARTED, S.ABORTED),
        (S.ABORTING, S.SUCCESS),
        (S.ABORTING, S.FAILURE),
        (S.ABORTING, S.ABORTED),
        (S.STARTED, S.PENDING),  # a retryable task requeued after shutdown or a lost owner
        (S.ABORTING, S.PENDING),
    }
    assert is_allowed(old, new) is ((old, new) in allowed)


@pytest.mark.parametrize("new", list(S))
def test_new_records_start_pending_or_started(new: TaskState) -> None:
    assert is_allowed(None, new) is (new in (S.PENDING, S.STARTED))


@pytest.mark.parametrize(
    ("state", "ever_started", "decision"),
    [
        (None, False, StartDecision.CREATE),
        (S.PENDING, False, StartDecision.START),
        (S.STARTED, True, StartDecision.ALREADY_STARTED),
        (S.ABORTING, True, StartDecision.ALREADY_STARTED),
        (S.ABORTED, False, StartDecision.ABORTED_BEFORE_START),
        (S.ABORTED, True, StartDecision.ALREADY_FINISHED),
        (S.SUCCESS, True, StartDecision.ALREADY_FINISHED),
        (S.FAILURE, True, StartDecision.ALREADY_FINISHED),
        (S.FAILURE, False, StartDecision.ALREADY_FINISHED),
    ],
)
def test_decide_start(state: TaskState | None, ever_started: bool, decision: StartDecision) -> None:
    assert decide_start(state, ever_started=ever_started) is decision


@pytest.mark.parametrize(
    ("stopped", "failed", "state"),
    [
        (True, False, S.ABORTED),
        (True, True, S.ABORTED),
        (False, False, S.SUCCESS),
        (False, True, S.FAILURE),
    ],
)
def test_end_state(stopped: bool, failed: bool, state: TaskState) -> None:
    assert end_state(stopped_by_abort=stopped, failed=failed) is state
    assert state in {s for s in S if is_allowed(S.STARTED, s)}


def test_sql_guards_mirror_the_rules() -> None:
    from aioabort.backends import _sql

    assert _sql.ABORTABLE == "('PENDING', 'STARTED')"
    assert _sql.RUNNING == "('ABORTING', 'STARTED')"
    assert _sql.abort_case() == (
        "CASE state WHEN 'PENDING' THEN 'ABORTED' WHEN 'STARTED' THEN 'ABORTING' END"
    )


@pytest.mark.parametrize(
    ("retryable", "stopped", "code", "requeue"),
    [
        (True, True, "shutdown", True),
        (True, True, "user", False),
        (True, True, "timeout", False),
        (True, False, "shutdown", False),
        (False, True, "shutdown", False),
        (True, True, None, False),
    ],
)
def test_should_requeue(retryable: bool, stopped: bool, code: str | None, requeue: bool) -> None:
    from aioabort._state import should_requeue

    assert (
        should_requeue(retryable=retryable, stopped_by_abort=stopped, reason_code=code) is requeue
    )
