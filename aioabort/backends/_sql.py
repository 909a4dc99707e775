"""Pieces of SQL both stores build from :mod:`aioabort._state`, so guards mirror the rules."""

from __future__ import annotations

from collections.abc import Collection

from .._state import ABORTABLE_STATES, FINISHABLE_STATES, TaskState, after_abort_request


def in_list(states: Collection[TaskState]) -> str:
    """``('A', 'B')`` for a ``state IN ...`` guard (values are enum members, never user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"


def abort_case() -> str:
    """A ``CASE`` expression giving the state an abort request moves each abortable state to."""
    arms = " ".join(
        f"WHEN '{s.value}' THEN '{target.value}'"
        for s in sorted(ABORTABLE_STATES)
        if (target := after_abort_request(s)) is not None
    )
    return f"CASE state {arms} END"


ABORTABLE = in_list(ABORTABLE_STATES)
RUNNING = in_list(FINISHABLE_STATES)
TERMINAL_ABORTED_AT_ONCE = "'" + TaskState.ABORTED.value + "'"

#: Columns read into a TaskRecord, in order.
COLUMNS = (
    "id, name, queue, parent_id, state, args, result, error, abort_code, abort_message, "
    "abort_by, abort_at, progress, message, owner, created_at, started_at, finished_at"
)
