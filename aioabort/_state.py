"""Task states and the legal changes between them, as pure functions.

Nothing here touches storage. Each store's SQL guards (``WHERE state IN (...)``) are built from
the sets defined here, so the database and this module cannot disagree.

::

    PENDING ──start──▶ STARTED ──finish──▶ SUCCESS | FAILURE | ABORTED
       │                  │
       │abort             │abort
       ▼                  ▼
    ABORTED            ABORTING ──finish──▶ SUCCESS | FAILURE | ABORTED

Only the consumer (the scope that runs the body) writes an end state from STARTED/ABORTING;
``abort()`` records a request. Terminal states never change. A *retryable* task cut off by a
worker's shutdown or by the loss of its owner goes back from STARTED/ABORTING to PENDING.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._errors import TaskAlreadyExists, TaskAlreadyFinished, TaskAlreadyStarted, UsageError
from ._types import (
    MAX_OFFSET,
    MAX_TASK_ID_LENGTH,
    AbortReason,
    ErrorInfo,
    JSONValue,
    check_key,
    check_labels,
    check_name,
    check_text,
    utcnow,
)


class TaskState(enum.StrEnum):
    """Where a task is in its life."""

    PENDING = "PENDING"
    """Recorded (queued), not yet started."""
    STARTED = "STARTED"
    """Running in a scope."""
    ABORTING = "ABORTING"
    """Running, and an abort was requested; the scope has not ended yet."""
    SUCCESS = "SUCCESS"
    """The body completed (an abort request, if any, stays on the record)."""
    FAILURE = "FAILURE"
    """The body raised, was cancelled from outside, or its owner process was lost."""
    ABORTED = "ABORTED"
    """Stopped by an abort, or aborted before it ever started."""

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


#: States that never change again.
TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCESS, TaskState.FAILURE, TaskState.ABORTED}
)
#: States in which a scope is running the body.
RUNNING_STATES: frozenset[TaskState] = frozenset({TaskState.STARTED, TaskState.ABORTING})
#: States in which ``abort()`` records a new request.
ABORTABLE_STATES: frozenset[TaskState] = frozenset({TaskState.PENDING, TaskState.STARTED})
#: States from which the owning scope may write an end state.
FINISHABLE_STATES: frozenset[TaskState] = RUNNING_STATES
#: States a dead owner's records are reaped from.
REAPABLE_STATES: frozenset[TaskState] = RUNNING_STATES
#: States a retryable task is put back in the queue from.
REQUEUEABLE_STATES: frozenset[TaskState] = RUNNING_STATES

_ALLOWED: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (TaskState.PENDING, TaskState.STARTED),
        (TaskState.PENDING, TaskState.ABORTED),
        (TaskState.STARTED, TaskState.ABORTING),
        *((s, end) for s in RUNNING_STATES for end in TERMINAL_STATES),
        *((s, TaskState.PENDING) for s in REQUEUEABLE_STATES),
    }
)


def is_allowed(old: TaskState | None, new: TaskState) -> bool:
    """Whether a record may move from ``old`` (``None``: no record yet) to ``new``.

    A new record starts PENDING (queued) or STARTED (a scope entered with no record).
    """
    if old is None:
        return new in (TaskState.PENDING, TaskState.STARTED)
    return (old, new) in _ALLOWED


def after_abort_request(state: TaskState) -> TaskState | None:
    """The state an abort request moves ``state`` to, or ``None`` if it records nothing.

    PENDING ends ABORTED at once (the task never runs); STARTED becomes ABORTING (only the
    consumer writes the end state); an ABORTING task already has a request (first reason wins);
    a terminal task never changes.
    """
    if state is TaskState.PENDING:
        return TaskState.ABORTED
    if state is TaskState.STARTED:
        return TaskState.ABORTING
    return None


class StartDecision(enum.Enum):
    """What entering a scope does with the record it finds."""

    CREATE = "create"
    """No record: create one, STARTED."""
    START = "start"
    """A PENDING record: move it to STARTED."""
    ABORTED_BEFORE_START = "aborted_before_start"
    """Aborted while PENDING: cancel the body at once, write nothing."""
    ALREADY_FINISHED = "already_finished"
    """SUCCESS/FAILURE (or ABORTED after running): refuse."""
    ALREADY_STARTED = "already_started"
    """STARTED/ABORTING: refuse; another scope owns it."""
    TAKEN = "taken"
    """A PENDING record the caller may not adopt (guarantee G11: a web request's id naming a
    queued job): refuse, write nothing."""


def decide_start(
    state: TaskState | None, *, ever_started: bool, adopt: bool = True
) -> StartDecision:
    """Decide what entering a scope does, from the record's state (``None``: no record).

    :param ever_started: whether the record was ever started (``started_at`` is set); tells
        "aborted before it started" from "stopped by an abort while running".
    :param adopt: whether a PENDING record (queued by someone else) may be started; without
        it only a new record, or one aborted before it started, is the caller's.
    """
    if state is None:
        return StartDecision.CREATE
    if state is TaskState.PENDING:
        return StartDecision.START if adopt else StartDecision.TAKEN
    if state in RUNNING_STATES:
        return StartDecision.ALREADY_STARTED
    if state is TaskState.ABORTED and not ever_started:
        return StartDecision.ABORTED_BEFORE_START
    return StartDecision.ALREADY_FINISHED


#: Abort codes that send a retryable task back to the queue instead of ending it.
REQUEUE_CODES: frozenset[str] = frozenset({AbortReason.SHUTDOWN})

#: States of a parent whose new children are born aborted (and started ones abort at once).
PARENT_ABORTED_STATES: frozenset[TaskState] = frozenset({TaskState.ABORTING, TaskState.ABORTED})

#: Abort codes that stop only the task they are sent to: a process's shutdown
#: does not travel to children queued for, or running in, other processes (the ones running
#: in the process that shuts down are stopped by its own shutdown).
NON_CASCADING_CODES: frozenset[str] = frozenset({AbortReason.SHUTDOWN})


def cascades(reason: AbortReason | None) -> bool:
    """Whether an abort with ``reason`` reaches the task's unfinished descendants, and makes
    children created under it be born aborted."""
    return reason is not None and reason.code not in NON_CASCADING_CODES


def should_requeue(*, retryable: bool, stopped_by_abort: bool, reason_code: str | None) -> bool:
    """Whether a task that just ended goes back to PENDING instead of its end state.

    Only a retryable task stopped by a worker's shutdown (an abort with code ``shutdown``) is
    requeued; an abort asked for by anyone else, a timeout or a failure is final.
    """
    return retryable and stopped_by_abort and reason_code in REQUEUE_CODES


def requeue_after_loss(record: TaskRecord) -> bool:
    """Whether a running task whose owner was lost goes back to PENDING (else it is reaped
    as FAILURE, cause ``lost``): a retryable one with no abort request other than
    ``shutdown``."""
    return record.retryable and (record.reason is None or record.reason.code in REQUEUE_CODES)


def parent_reason(parent_id: str, reason: AbortReason) -> AbortReason:
    """The reason a child gets when its parent ``parent_id`` is aborted with ``reason``."""
    message = f"parent {parent_id} was aborted"
    if reason.message:
        message = f"{message}: {reason.message}"
    return AbortReason(AbortReason.PARENT, message[:2000], reason.by, reason.at)


#: What a requeue clears on the record, besides moving it to PENDING (a fresh run).
REQUEUE_CLEARS: tuple[str, ...] = (
    "owner",
    "started_at",
    "reason",
    "abort_delivered_at",
    "progress",
    "message",
)

#: The message of the reason a queued task that expired ends with (code ``expired``).
EXPIRED_MESSAGE = "it was still queued when it expired"


def is_due(record: TaskRecord, now: datetime) -> bool:
    """Whether a worker may claim ``record`` at ``now``: PENDING, past its ``not_before``, and
    not expired (an expired one is ended, never run)."""
    return (
        record.state is TaskState.PENDING
        and (record.not_before is None or record.not_before <= now)
        and not is_expired(record, now)
    )


def is_expired(record: TaskRecord, now: datetime) -> bool:
    """Whether ``record`` is a queued task past its ``expires_at``: it ends ABORTED (code
    ``expired``) whichever process sees it first."""
    return (
        record.state is TaskState.PENDING
        and record.expires_at is not None
        and record.expires_at <= now
    )


def superseded_reason(new_id: str, by: str) -> AbortReason:
    """The reason an unfinished task of a key is aborted with when ``new_id`` supersedes it."""
    return AbortReason(AbortReason.SUPERSEDED, f"superseded by task {new_id}", by)


#: The messages of a lost task's error; ``{owner}`` is the owner's id (``?`` if none).
REAPED_MESSAGE = "owner {owner} stopped heartbeating"
RELEASED_MESSAGE = "owner {owner} closed while the task was running"


def reaped_error(owner: str | None) -> ErrorInfo:
    """The error of a task whose owner stopped heartbeating."""
    return ErrorInfo(ErrorInfo.LOST, "", REAPED_MESSAGE.format(owner=owner or "?"))


def released_error(owner: str) -> ErrorInfo:
    """The error of a task still running when its owner's App closed."""
    return ErrorInfo(ErrorInfo.LOST, "", RELEASED_MESSAGE.format(owner=owner))


def end_state(*, stopped_by_abort: bool, failed: bool) -> TaskState:
    """The end state the consumer writes when its scope exits.

    :param stopped_by_abort: the scope's own cancellation stopped the body.
    :param failed: the body raised (or an outer cancellation stopped it).
    """
    if stopped_by_abort:
        return TaskState.ABORTED
    return TaskState.FAILURE if failed else TaskState.SUCCESS


#: Seconds after which a task still running after its abort reached it is shown as ignoring
#: its abort (the default of ``App(ignored_abort_after=)``).
IGNORED_ABORT_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task's record as the store holds it.

    :ivar id: the task id.
    :ivar name: the task's name (the registered function for runner tasks), or ``None``.
    :ivar state: its :class:`TaskState`.
    :ivar reason: the first abort request's reason, or ``None`` if none was made.
    :ivar result: the stored JSON result (runner tasks), else ``None``.
    :ivar error: how it failed, for FAILURE.
    :ivar progress: the last reported progress (0..1), or ``None``.
    :ivar message: the last reported progress message, or ``None``.
    :ivar created_at: when the record was created.
    :ivar started_at: when a scope started it, or ``None``.
    :ivar finished_at: when it reached a terminal state, or ``None``.
    :ivar owner: the id of the process (App) that runs or ran it.
    :ivar parent_id: the task that started this one, or ``None``.
    :ivar queue: the queue it was submitted to (runner tasks).
    :ivar args: its JSON arguments (runner tasks), else ``None``.
    :ivar retryable: whether it goes back to PENDING when cut off by shutdown or a lost owner.
    :ivar attempts: how many times it was started.
    :ivar abort_delivered_at: when the abort reached the scope running it
        ([G16](semantics.md#g16): a task still ABORTING long after this ignores its abort), or
        ``None``.
    :ivar labels: the labels it was created with (``{"user": "alice"}``), for filters and bulk
        aborts.
    :ivar not_before: no worker claims it before this time (``countdown=``/``eta=``), or
        ``None``.
    :ivar expires_at: still queued at this time, it ends ABORTED (code ``expired``) and never
        runs (``expires=``), or ``None``.
    :ivar time_limit: this call's time limit in seconds (``apply(time_limit=)``, over the
        task's own), or ``None``.
    :ivar key: the key it was queued with (``apply(key=...)``): with ``supersede=True``, a
        new task of the key aborts the unfinished earlier ones (code ``superseded``).
    """

    id: str
    name: str | None
    state: TaskState
    reason: AbortReason | None
    result: JSONValue
    error: ErrorInfo | None
    progress: float | None
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    owner: str | None
    parent_id: str | None = None
    queue: str | None = None
    args: JSONValue = None
    retryable: bool = False
    attempts: int = 0
    abort_delivered_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    not_before: datetime | None = None
    expires_at: datetime | None = None
    time_limit: float | None = None
    key: str | None = None

    @property
    def is_finished(self) -> bool:
        """Whether the record is terminal."""
        return self.state.is_terminal

    def ignoring_abort(
        self, after: float = IGNORED_ABORT_AFTER, *, now: datetime | None = None
    ) -> float | None:
        """For how many seconds the task has ignored its abort: still ABORTING ``after``
        seconds or more after the abort reached its scope ([G16](semantics.md#g16)); else
        ``None``."""
        delivered = self.abort_delivered_at
        if self.state is not TaskState.ABORTING or delivered is None:
            return None
        waited = ((now or utcnow()) - delivered).total_seconds()
        return waited if waited >= after else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the form the CLI's ``--json`` and the web router use."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        reason, error = self.reason, self.error
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "reason": None if reason is None else reason.to_dict(),
            "result": self.result,
            "error": None
            if error is None
            else {"cause": error.cause, "type": error.type, "message": error.message},
            "progress": self.progress,
            "message": self.message,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "owner": self.owner,
            "parent_id": self.parent_id,
            "queue": self.queue,
            "args": self.args,
            "abort_delivered_at": iso(self.abort_delivered_at),
            "labels": dict(self.labels),
            "retryable": self.retryable,
            "attempts": self.attempts,
            "not_before": iso(self.not_before),
            "expires_at": iso(self.expires_at),
            "time_limit": self.time_limit,
            "key": self.key,
        }

    @property
    def abort_requested(self) -> bool:
        """Whether an abort was ever requested (Celery's ``is_aborted()`` meaning)."""
        return self.reason is not None


#: What an abort request found: ``aborted`` (this request was recorded), ``already_aborting``
#: (an earlier one was), ``already_finished`` (the task had ended), ``not_found``.
AbortVerdict = Literal["aborted", "already_aborting", "already_finished", "not_found"]


def abort_verdict(recorded: bool, state: TaskState | None) -> AbortVerdict:
    """Classify an abort request by what ``abort()`` returned and the state read after it
    (``None``: there is no such task): the CLI's exit codes and the router's statuses."""
    if state is None:
        return "not_found"
    if recorded:
        return "aborted"
    return "already_finished" if state.is_terminal else "already_aborting"


def check_states(states: Collection[TaskState | str]) -> list[TaskState]:
    """The states of a filter. :raises UsageError: for one that is not a state."""
    try:
        return [TaskState(s) for s in states]
    except ValueError as exc:
        raise UsageError(
            f"unknown state in {list(states)!r}; states are "
            + ", ".join(s.value for s in TaskState)
        ) from exc


def listing_filters(
    states: Collection[TaskState | str] | None,
    name: str | None,
    limit: int,
    offset: int,
    labels: dict[str, str] | None,
    id_prefix: str | None,
    key: str | None,
) -> dict[str, Any]:
    """A listing's filters (``App.tasks()``), checked, as ``Store.list_tasks()`` takes them.

    :raises UsageError: for bad states, labels, key, limit or offset.
    :raises InvalidText: for a ``name`` or ``id_prefix`` no store holds.
    """
    wanted_labels = check_labels(labels)
    if not 1 <= limit <= 10_000 or not 0 <= offset <= MAX_OFFSET:
        raise UsageError(f"limit must be within 1..10000 and offset within 0..{MAX_OFFSET}")
    if name is not None:
        check_name(name)
    if id_prefix is not None:
        check_text(id_prefix, "id_prefix", MAX_TASK_ID_LENGTH)
    return {
        "states": None if states is None else check_states(states),
        "name": name,
        "limit": limit,
        "offset": offset,
        "labels": wanted_labels or None,
        "id_prefix": id_prefix or None,
        "key": None if key is None else check_key(key),
    }


def refuse_start(task_id: str, decision: StartDecision, record: TaskRecord) -> None:
    """Raise what entering a scope on ``record`` must refuse (see :func:`aioabort.abortable`):
    a finished task, one running elsewhere, an id taken by a record of another kind."""
    if decision is StartDecision.ALREADY_FINISHED:
        raise TaskAlreadyFinished(
            task_id,
            f"task {task_id!r} already finished ({record.state}); a finished task cannot run again",
        )
    if decision is StartDecision.ALREADY_STARTED:
        raise TaskAlreadyStarted(
            task_id, f"task {task_id!r} is already running (owner {record.owner})"
        )
    if decision is StartDecision.TAKEN:
        raise TaskAlreadyExists(task_id)
