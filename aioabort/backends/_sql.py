"""Pieces of SQL both stores build from :mod:`aioabort._state`, so guards mirror the rules."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from .._state import (
    ABORTABLE_STATES,
    FINISHABLE_STATES,
    NON_CASCADING_CODES,
    PARENT_ABORTED_STATES,
    REAPED_MESSAGE,
    RELEASED_MESSAGE,
    REQUEUE_CLEARS,
    REQUEUE_CODES,
    TERMINAL_STATES,
    TaskRecord,
    TaskState,
    after_abort_request,
)
from .._types import AbortReason, ErrorInfo, utcnow


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
#: The states an abort request ends at once (a queued task never runs: ABORTED, finished now).
ABORT_ENDS = in_list({s for s in ABORTABLE_STATES if after_abort_request(s) in TERMINAL_STATES})
RUNNING = in_list(FINISHABLE_STATES)

#: Columns read into a TaskRecord, in order.
COLUMNS = (
    "id, name, queue, parent_id, state, args, result, error, abort_code, abort_message, "
    "abort_by, abort_at, progress, message, owner, created_at, started_at, finished_at, "
    "retryable, attempts, abort_delivered_at, labels, not_before, expires_at, time_limit, key"
)


COLUMN_COUNT = len(COLUMNS.split(","))

#: The record's fields as columns (a reason is four).
_FIELD_COLUMNS = {"reason": ("abort_code", "abort_message", "abort_by", "abort_at")}


def requeue_reset() -> str:
    """The ``SET`` list of a requeue: PENDING, and :data:`REQUEUE_CLEARS` cleared."""
    cleared = [c for f in REQUEUE_CLEARS for c in _FIELD_COLUMNS.get(f, (f,))]
    return ", ".join(["state = 'PENDING'", *(f"{c} = NULL" for c in cleared)])


def requeue_when() -> str:
    """The guard that sends a lost retryable task back to the queue (``requeue_after_loss``)."""
    codes = ", ".join(f"'{code}'" for code in sorted(REQUEUE_CODES))
    return f"retryable AND (abort_code IS NULL OR abort_code IN ({codes}))"


def lost_error(json_object: str, *, reaped: bool) -> str:
    """An expression for the JSON error of a lost task, the owner taken from each row.

    :param json_object: the dialect's JSON constructor, ``{}`` standing for its arguments.
    """
    before, after = (REAPED_MESSAGE if reaped else RELEASED_MESSAGE).split("{owner}")
    message = f"'{before}' || COALESCE(owner, '?') || '{after}'"
    return json_object.replace(
        "{}", f"'cause', '{ErrorInfo.LOST}', 'type', '', 'message', {message}"
    )


def columns(alias: str) -> str:
    """:data:`COLUMNS`, each qualified with ``alias`` (for statements that join)."""
    return ", ".join(f"{alias}.{name.strip()}" for name in COLUMNS.split(","))


#: The terminal states, for ``state IN ...`` (a purge deletes only these).
TERMINAL = in_list(TERMINAL_STATES)

#: The states of a parent whose children are born aborted.
PARENT_ABORTED = in_list(PARENT_ABORTED_STATES)
#: The abort codes that do not cascade to children (shutdowns), for ``code NOT IN ...``.
NON_CASCADING = "(" + ", ".join(f"'{code}'" for code in sorted(NON_CASCADING_CODES)) + ")"


def reason_from(
    code: str | None, message: str | None, by: str | None, at: datetime | None
) -> AbortReason | None:
    """The stored abort columns as an :class:`AbortReason` (``None`` when no abort was asked)."""
    if code is None:
        return None
    return AbortReason(code, message or "", by, at or utcnow())


def record_from_row(row: Sequence[Any], ts: Callable[[Any], datetime | None]) -> TaskRecord:
    """A row of :data:`COLUMNS` as a :class:`TaskRecord`; ``ts`` converts stored timestamps."""
    (
        task_id,
        name,
        queue,
        parent_id,
        state,
        args,
        result,
        error,
        code,
        message,
        by,
        at,
        progress,
        progress_message,
        owner,
        created_at,
        started_at,
        finished_at,
        retryable,
        attempts,
        delivered_at,
        labels,
        not_before,
        expires_at,
        time_limit,
        key,
    ) = row
    created = ts(created_at)
    assert created is not None
    return TaskRecord(
        id=task_id,
        name=name,
        state=TaskState(state),
        reason=reason_from(code, message, by, ts(at)),
        result=None if result is None else json.loads(result),
        error=None if error is None else ErrorInfo.from_json(error),
        progress=progress,
        message=progress_message,
        created_at=created,
        started_at=ts(started_at),
        finished_at=ts(finished_at),
        owner=owner,
        parent_id=parent_id,
        queue=queue,
        args=None if args is None else json.loads(args),
        retryable=bool(retryable),
        attempts=int(attempts or 0),
        abort_delivered_at=ts(delivered_at),
        labels={} if labels is None else json.loads(labels),
        not_before=ts(not_before),
        expires_at=ts(expires_at),
        time_limit=None if time_limit is None else float(time_limit),
        key=key,
    )


def timeline_requeued(error_type: str) -> str:
    """A query of the events (n, at, kind, actor, detail) a run that goes back to the queue
    (``OLD`` running, ``NEW`` PENDING) stores: the attempt's own, which the requeue clears from
    the record, then ``retried``: :func:`aioabort._timeline.stored_events` in SQL.

    :param error_type: the dialect's expression for the type in ``NEW.error`` (JSON text).
    """
    named = ", ".join(f"'{c}'" for c in (AbortReason.EXPIRED, AbortReason.SUPERSEDED))
    started = (
        "SELECT 1 AS n, OLD.started_at AS at, 'started' AS kind, OLD.owner AS actor, "
        "NULL AS detail WHERE OLD.started_at IS NOT NULL"
    )
    requested = (
        f"SELECT 2, OLD.abort_at, CASE WHEN OLD.abort_code IN ({named}) THEN OLD.abort_code "
        "ELSE 'abort_requested' END, OLD.abort_by, OLD.abort_code || CASE WHEN "
        "COALESCE(OLD.abort_message, '') = '' THEN '' ELSE ': ' || OLD.abort_message END "
        "WHERE OLD.abort_code IS NOT NULL"
    )
    delivered = (
        "SELECT 3, OLD.abort_delivered_at, 'abort_delivered', OLD.owner, NULL "
        "WHERE OLD.abort_delivered_at IS NOT NULL"
    )
    retried = (
        "SELECT 4, NEW.updated_at, 'retried', OLD.owner, "
        f"COALESCE(NULLIF({error_type}, ''), OLD.abort_code)"
    )
    parts = (started, requested, delivered, retried)
    return " UNION ALL ".join(parts)
