"""The timeline of a task: what happened to it, as events, derived from the changes of its
record (pure). Every store writes them in the transaction of the change they describe
(MemoryStore applies :func:`events_of` to each change; the SQL stores' triggers mirror it),
and a purge removes them with their record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._state import RUNNING_STATES, TaskRecord, TaskState
from ._types import AbortReason

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
        ``retried``, ``expired``, ``superseded`` or ``ended``.
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


def events_of(old: TaskRecord | None, new: TaskRecord) -> list[tuple[str, str | None, str | None]]:
    """The events (kind, by, detail) a change of a record from ``old`` (``None``: created)
    to ``new`` makes, in order. The SQL stores' triggers write the same."""
    if old is None:
        if new.state is TaskState.PENDING:
            return [("queued", None, new.queue)]
        return [("started", new.owner, None)]
    found: list[tuple[str, str | None, str | None]] = []
    if old.state is TaskState.PENDING and new.state is TaskState.STARTED:
        found.append(("started", new.owner, None))
    if old.reason is None and new.reason is not None:
        reason = new.reason
        detail = reason.code if not reason.message else f"{reason.code}: {reason.message}"
        found.append((_abort_kind(reason), reason.by, detail))
    if old.abort_delivered_at is None and new.abort_delivered_at is not None:
        found.append(("abort_delivered", new.owner, None))
    if old.state in RUNNING_STATES and new.state is TaskState.PENDING:
        cause = new.error.type if new.error is not None else None
        found.append(("retried", old.owner, cause or (old.reason.code if old.reason else None)))
    if not old.state.is_terminal and new.state.is_terminal:
        found.append(("ended", new.owner, new.state.value))
    return found
