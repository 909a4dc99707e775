"""The timeline of a task: what happened to it, as events (pure).

Every event is written in the transaction of the change it describes, at no cost on the hot
path: the current attempt's events are the record's own fields (``started_at``, the reason,
``abort_delivered_at``, ``finished_at``), and only what the record will not tell later is
stored as rows (:func:`stored_events`: its creation as a queued task, and an attempt that a
retry or requeue clears from the record; and the marks of a run that ignores its abort,
``abort_ignored`` and ``escalated``, each its own write: ``Store.note_event``). MemoryStore applies that rule to each change; the
SQL stores' triggers mirror it. A purge removes the rows with their record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._state import RUNNING_STATES, TaskRecord, TaskState
from ._types import AbortReason, reason_text

#: The kinds of event, in the order they usually happen.
KINDS = (
    "queued",
    "started",
    "abort_requested",
    "abort_delivered",
    "abort_ignored",
    "escalated",
    "retried",
    "expired",
    "superseded",
    "ended",
)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One thing that happened to a task (``await handle.events()``, oldest first).

    :ivar at: when, an aware UTC datetime (the store's clock).
    :ivar kind: ``queued``, ``started``, ``abort_requested``, ``abort_delivered``,
        ``abort_ignored``, ``escalated``, ``retried``, ``expired``, ``superseded`` or
        ``ended``.
    :ivar by: who: the process that ran or ended it (its owner id), or who asked for the
        abort; ``None`` where nobody is known.
    :ivar detail: what: the queue, the abort's code and message, the state it ended in, the
        error a retry follows; or ``None``.
    """

    at: datetime
    kind: str
    by: str | None
    detail: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``aioabort show --json``, the web router)."""
        return {"at": self.at.isoformat(), "kind": self.kind, "by": self.by, "detail": self.detail}


def _abort_kind(reason: AbortReason) -> str:
    if reason.code in (AbortReason.EXPIRED, AbortReason.SUPERSEDED):
        return reason.code
    return "abort_requested"


def _attempt(record: TaskRecord) -> list[TaskEvent]:
    """The events of the record's current attempt, read from its own fields (written in the
    transaction of each change): started, the abort (who, why), its delivery, the end."""
    found = []
    if record.started_at is not None:
        found.append(TaskEvent(record.started_at, "started", record.owner, None))
    reason = record.reason
    if reason is not None:
        found.append(TaskEvent(reason.at, _abort_kind(reason), reason.by, reason_text(reason)))
    if record.abort_delivered_at is not None:
        found.append(TaskEvent(record.abort_delivered_at, "abort_delivered", record.owner, None))
    if record.finished_at is not None and record.state.is_terminal:
        found.append(TaskEvent(record.finished_at, "ended", record.owner, record.state.value))
    return found


def stored_events(old: TaskRecord | None, new: TaskRecord, at: datetime) -> list[TaskEvent]:
    """The events a change of a record (from ``old``; ``None``: created) stores as rows: what
    the record will not tell later. Its creation as a queued task; and, when a run goes back
    to the queue (a retry, a requeue), that attempt's events, which the requeue clears from
    the record, and the ``retried`` itself. The SQL stores' triggers write the same."""
    if old is None:
        return [TaskEvent(at, "queued", None, new.queue)] if new.state is TaskState.PENDING else []
    if old.state in RUNNING_STATES and new.state is TaskState.PENDING:
        cause = new.error.type if new.error is not None else None
        detail = cause or (old.reason.code if old.reason is not None else None)
        return [*_attempt(old), TaskEvent(at, "retried", old.owner, detail)]
    return []


#: The marks of a run that ignores its abort: rows written while it runs (``note_event``).
NOTED = ("abort_ignored", "escalated")


def timeline(stored: list[TaskEvent], record: TaskRecord | None) -> list[TaskEvent]:
    """A task's timeline, oldest first: its stored events, then its current attempt's; a
    mark of :data:`NOTED` goes at the end of the attempt it was written in (before its
    ``ended`` or ``retried``), not where its row falls. (Ordered by kind, not by time: an
    abort request's time may come from another clock than the store's.)"""
    ordered: list[TaskEvent] = []
    held: list[TaskEvent] = []
    for event in [*stored, *([] if record is None else _attempt(record))]:
        if event.kind in NOTED:
            held.append(event)
            continue
        if event.kind in ("ended", "retried"):
            ordered.extend(held)
            held.clear()
        ordered.append(event)
    return ordered + held
