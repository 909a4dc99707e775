"""The command line's pure pieces, without a process: how ``abort`` classifies a request and
picks its exit code, and how ``--label`` and durations are parsed."""

from __future__ import annotations

from datetime import timedelta

import pytest

import aioabort
from aioabort import TaskState
from aioabort._state import abort_verdict
from aioabort._types import parse_labels
from aioabort.cli._abort import Result, exit_code
from aioabort.cli._common import parse_duration


@pytest.mark.parametrize(
    ("recorded", "state", "outcome"),
    [
        (True, TaskState.ABORTED, "aborted"),  # queued: aborted at once
        (True, TaskState.ABORTING, "aborted"),
        (False, TaskState.ABORTING, "already_aborting"),
        (False, TaskState.SUCCESS, "already_finished"),
        (False, TaskState.ABORTED, "already_finished"),
        (False, None, "not_found"),
        (True, None, "not_found"),  # recorded, then purged before the read
    ],
)
def test_an_abort_request_is_classified_by_its_answer_and_the_state_after(
    recorded: bool, state: TaskState | None, outcome: str
) -> None:
    assert abort_verdict(recorded, state) == outcome


def _aborted(running: bool | None = None, state: str = "ABORTED") -> Result:
    return Result("a", "aborted", state, running)


@pytest.mark.parametrize(
    ("results", "code"),
    [
        ([], 0),
        ([_aborted(), Result("b", "already_aborting", "ABORTING")], 0),
        ([_aborted(), Result("b", "not_found", None)], 1),
        ([Result("b", "not_found", None), Result("c", "already_finished", "SUCCESS")], 2),
        ([Result("c", "already_finished", "SUCCESS"), Result("b", "not_found", None)], 2),
        # --wait: how they ended decides first
        ([_aborted(running=False), Result("b", "not_found", None, False)], 1),
        ([_aborted(running=False, state="SUCCESS")], 5),  # finished despite the abort
        ([_aborted(running=False, state="SUCCESS"), Result("c", "already_finished", "x")], 5),
        ([Result("b", "already_aborting", "FAILURE", False)], 5),
        ([Result("c", "already_finished", "SUCCESS", False)], 2),  # ended before: not 5
        ([_aborted(running=True, state="ABORTING"), _aborted(running=False, state="x")], 7),
    ],
)
def test_the_exit_code_of_abort(results: list[Result], code: int) -> None:
    assert exit_code(results) == code


def test_a_result_as_text_and_as_json() -> None:
    finished = Result("c", "already_finished", "SUCCESS")
    assert finished.text() == "c: already finished (SUCCESS)"
    assert finished.to_json() == {"id": "c", "outcome": "already_finished", "state": "SUCCESS"}
    waited = Result("a", "already_aborting", "ABORTED", running=False)
    assert waited.text() == "a: already aborting, ended ABORTED"
    assert waited.to_json()["running"] is False
    assert Result("b", "not_found", None, running=False).text() == "b: not found"
    assert Result("d\x1b[2J", "aborted", "ABORTING", running=True).text() == (
        "d\\x1b[2J: aborted, still running"
    )


def test_labels_are_key_value_pairs() -> None:
    assert parse_labels(["user=alice", "note=a=b", "empty=", "user=bob"]) == {
        "user": "bob",
        "note": "a=b",
        "empty": "",
    }
    for bad in ("nokey", "=value"):
        with pytest.raises(aioabort.UsageError, match="must be KEY=VALUE"):
            parse_labels([bad])


def test_durations() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration(" 1.5m ") == timedelta(seconds=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("soon", "5", "-1s", "1w"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999d")
