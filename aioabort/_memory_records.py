"""The records that :class:`~aioabort.testing.MemoryStore` instances share, and the pure
filters over them (the memory store's "tables" and "WHERE clauses")."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from ._backend import AbortNotice, Change, ChangeCallback
from ._state import TaskRecord, TaskState, is_due
from ._timeline import TaskEvent, stored_events
from ._types import utcnow


def new_record(task_id: str, *, name: str | None, state: TaskState, **fields: Any) -> TaskRecord:
    """A record as a store first writes it: nothing reported, requested or ended yet."""
    blank: dict[str, Any] = {
        "reason": None,
        "result": None,
        "error": None,
        "progress": None,
        "message": None,
        "started_at": None,
        "finished_at": None,
        "owner": None,
    }
    return TaskRecord(
        id=task_id, name=name, state=state, created_at=utcnow(), **{**blank, **fields}
    )


class MemoryDatabase:
    """The records, owners and watchers that :class:`MemoryStore` instances share."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.order: dict[str, int] = {}  # insertion order: ties of created_at keep it
        self.beats: dict[str, int] = {}
        self.last_seen: dict[str, float] = {}  # by the database's clock (monotonic)
        self.lease: tuple[str, float] | None = None  # the reaper's: (holder, expires)
        self.serving: dict[str, set[tuple[str, str]]] = {}  # owner: its workers' (queue, name)
        self.watchers: list[tuple[asyncio.AbstractEventLoop, ChangeCallback]] = []
        self.events: dict[str, list[TaskEvent]] = {}  # each task's timeline
        self._counter = itertools.count()

    def insert(self, record: TaskRecord) -> None:
        self.tasks[record.id] = record
        self.order[record.id] = next(self._counter)
        self.log_events(None, record)

    def log_events(self, old: TaskRecord | None, new: TaskRecord) -> None:
        """Store the events of a change of a record that the record will not tell later."""
        found = stored_events(old, new, utcnow())
        if found:
            self.events.setdefault(new.id, []).extend(found)

    def announce(self, ids: Iterable[str], notices: tuple[AbortNotice, ...] = ()) -> None:
        """Tell every watcher which records changed, on its own loop, after the current step
        (never inline)."""
        change = Change(notices, ids=frozenset(ids))
        for loop, on_change in list(self.watchers):
            loop.call_soon_threadsafe(on_change, change)


#: Databases named by ``memory://name`` URLs in this process.
NAMED: dict[str, MemoryDatabase] = {}


def matching(
    records: Iterable[TaskRecord],
    states: Collection[TaskState] | None,
    name: str | None,
    labels: Mapping[str, str] | None,
    id_prefix: str | None,
    key: str | None = None,
) -> list[TaskRecord]:
    """The records a listing's filters find (every given label must match)."""
    need = dict(labels or {})
    return [
        r
        for r in records
        if (not states or r.state in states)
        and (name is None or r.name == name)
        and all(r.labels.get(k) == v for k, v in need.items())
        and r.id.startswith(id_prefix or "")
        and (key is None or r.key == key)
    ]


def claimable(
    record: TaskRecord, queues: Collection[str], names: Collection[str] | None, now: datetime
) -> bool:
    """Whether a worker of ``queues`` running ``names`` may claim ``record`` at ``now``."""
    return (
        is_due(record, now) and record.queue in queues and (names is None or record.name in names)
    )


def due_at(record: TaskRecord) -> datetime:
    """When a queued record may first be claimed: the order claims take them in."""
    return record.created_at if record.not_before is None else record.not_before
