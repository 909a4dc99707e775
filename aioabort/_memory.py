"""MemoryStore: the reference implementation of the :class:`~aioabort.Store` contract, in
process (public as :mod:`aioabort.testing`).

Every rule comes from :mod:`aioabort._state`, as in the SQL stores; each operation is one
step on the event loop (no awaits inside), which is what makes it atomic. Several
``MemoryStore`` instances on one :class:`MemoryDatabase` behave like several processes on one
database: each has its own owner, and aborts reach the watchers of all of them. The URL
``memory://name`` gives the Apps of a process that name it one shared database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from ._backend import (
    AbortNotice,
    AbortOutcome,
    ChangeCallback,
    Due,
    StartResult,
    StoreStatistics,
    WatchedIds,
)
from ._errors import AppClosed, InvalidURL, TaskAlreadyExists
from ._memory_liveness import MemoryLiveness
from ._memory_records import NAMED, MemoryDatabase, claimable, due_at, matching, new_record
from ._state import (
    ABORTABLE_STATES,
    EXPIRED_MESSAGE,
    FINISHABLE_STATES,
    PARENT_ABORTED_STATES,
    REQUEUE_CLEARS,
    RUNNING_STATES,
    StartDecision,
    TaskRecord,
    TaskState,
    after_abort_request,
    cascades,
    decide_start,
    is_expired,
    parent_reason,
    superseded_reason,
)
from ._timeline import TaskEvent, timeline
from ._types import AbortReason, ErrorInfo, default_by, utcnow


class MemoryStore(MemoryLiveness):
    """The reference store: every record in memory, shared through a :class:`MemoryDatabase`.

    :param database: the database to share with other stores (a new one by default).
    """

    poll_interval = 0.0  # changes are pushed; nothing polls

    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.db = database if database is not None else MemoryDatabase()
        self.display_url = "memory://"
        self._open = False
        self._watching: tuple[asyncio.AbstractEventLoop, ChangeCallback] | None = None
        self._statements = 0

    @classmethod
    def check_url(cls, url: str) -> None:
        if not url.lower().startswith("memory://"):
            raise InvalidURL(f"a memory URL looks like memory://name, got {url!r}")

    @classmethod
    def from_url(cls, url: str, *, poll_interval: float | None = None) -> MemoryStore:
        name = url[len("memory://") :]
        store = cls(NAMED.setdefault(name, MemoryDatabase()))
        store.display_url = url
        return store

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def aclose(self) -> None:
        self._open = False
        if self._watching is not None and self._watching in self.db.watchers:
            self.db.watchers.remove(self._watching)
        self._watching = None

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        self._watching = (asyncio.get_running_loop(), on_change)
        self.db.watchers.append(self._watching)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(statements=self._statements)

    def _step(self) -> dict[str, TaskRecord]:
        """Every operation starts here: the store must be open; one "statement" is counted."""
        if not self._open:
            raise AppClosed("the memory store is not open")
        self._statements += 1
        return self.db.tasks

    def _changed(self, *ids: str) -> None:
        """A write: every watcher of the database learns which records changed."""
        self.db.announce(ids)

    # -- records -----------------------------------------------------------------------------

    async def create(
        self,
        task_id: str,
        *,
        name: str | None,
        queue: str | None = None,
        args_json: str | None = None,
        parent_id: str | None = None,
        retryable: bool = False,
        labels: Mapping[str, str] | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
        time_limit: float | None = None,
        key: str | None = None,
        supersede: bool = False,
    ) -> TaskRecord:
        tasks = self._step()
        if task_id in tasks:
            raise TaskAlreadyExists(task_id)
        earlier = [
            r.id
            for r in tasks.values()
            if supersede and key is not None and r.key == key and r.state in ABORTABLE_STATES
        ]
        record = new_record(
            task_id,
            name=name,
            state=TaskState.PENDING,
            parent_id=parent_id,
            queue=queue,
            args=None if args_json is None else json.loads(args_json),
            retryable=retryable,
            labels=dict(labels or {}),
            not_before=not_before,
            expires_at=expires_at,
            time_limit=time_limit,
            key=key,
        )
        self.db.insert(record)
        inherited = self._aborted_parent(parent_id)
        if inherited is not None:  # born into an aborted family: never runs
            record = self._abort(task_id, inherited)
            self.db.announce((), (AbortNotice(task_id, inherited, record.attempts),))
        if earlier:  # the same step: producers racing on the key leave one live task
            reason = superseded_reason(task_id, default_by())
            self.db.announce((), tuple(n for i in earlier for n in self._abort_family(i, reason)))
        self._changed(task_id)
        return record

    async def start(
        self,
        task_id: str,
        *,
        owner: str,
        name: str | None,
        parent_id: str | None = None,
        adopt: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> StartResult:
        tasks = self._step()
        current = tasks.get(task_id)
        decision = decide_start(
            None if current is None else current.state,
            ever_started=current is not None and current.started_at is not None,
            adopt=adopt,
        )
        now = utcnow()
        if decision is StartDecision.CREATE:
            record = new_record(
                task_id,
                name=name,
                state=TaskState.STARTED,
                started_at=now,
                owner=owner,
                parent_id=parent_id,
                attempts=1,
                labels=dict(labels or {}),
            )
            self.db.insert(record)
            inherited = self._aborted_parent(parent_id)
            if inherited is not None:  # started under an aborting parent: aborting already
                record = self._abort(task_id, inherited)
        elif decision is StartDecision.START:
            assert current is not None
            record = self._put(
                current,
                state=TaskState.STARTED,
                owner=owner,
                started_at=now,
                name=current.name if current.name is not None else name,
                attempts=current.attempts + 1,
            )
        else:
            assert current is not None
            return StartResult(decision, current)
        self._changed(task_id)
        return StartResult(decision, record)

    async def claim(
        self,
        *,
        owner: str,
        queues: Collection[str],
        limit: int,
        names: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        tasks, now = self._step(), utcnow()
        waiting = sorted(
            (r for r in tasks.values() if claimable(r, queues, names, now)),
            key=lambda r: (due_at(r), self.db.order[r.id]),
        )
        claimed = [
            self._put(
                r, state=TaskState.STARTED, owner=owner, started_at=now, attempts=r.attempts + 1
            )
            for r in waiting[:limit]
        ]
        if claimed:
            self._changed(*(r.id for r in claimed))
        return claimed

    async def has_pending(
        self, queues: Collection[str], names: Collection[str] | None = None
    ) -> bool:
        tasks, now = self._step(), utcnow()
        return any(claimable(r, queues, names, now) for r in tasks.values())

    async def next_due(self, queues: Collection[str], names: Collection[str] | None) -> Due:
        tasks, now = self._step(), utcnow()
        queued = [r for r in tasks.values() if r.state is TaskState.PENDING]
        due = [
            due_at(r)
            for r in queued
            if claimable(r, queues, names, due_at(r)) and not is_expired(r, now)
        ]
        expiring = [r.expires_at for r in queued if r.expires_at is not None]

        def seconds(times: list[datetime]) -> float | None:
            return None if not times else (min(times) - now).total_seconds()

        return Due(seconds(due), seconds(expiring))

    async def expire(
        self, task_ids: Collection[str] | None = None, *, by: str, limit: int = 1000
    ) -> list[str]:
        tasks, now = self._step(), utcnow()
        wanted = tasks.values() if task_ids is None else (tasks.get(i) for i in set(task_ids))
        expired = sorted(
            (r for r in wanted if r is not None and is_expired(r, now)),
            key=lambda r: (r.expires_at, self.db.order[r.id]),
        )[:limit]
        notices = []
        for record in expired:
            reason = AbortReason(AbortReason.EXPIRED, EXPIRED_MESSAGE, by, now)
            notices.append(AbortNotice(record.id, reason, self._abort(record.id, reason).attempts))
        if notices:
            self.db.announce((), tuple(notices))
        return [r.id for r in expired]

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.owner != owner or current.state not in FINISHABLE_STATES:
            return current
        record = self._back_to_queue(current)
        self._changed(task_id)
        return record

    async def retry(
        self, task_id: str, *, owner: str, not_before: datetime, error: ErrorInfo
    ) -> TaskRecord | None:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.owner != owner or current.state is not TaskState.STARTED:
            return current
        record = self._back_to_queue(current, not_before=not_before, error=error)
        self._changed(task_id)
        return record

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.state not in ABORTABLE_STATES:
            return AbortOutcome(False, current)
        notices = self._abort_family(task_id, reason)
        self.db.announce((), notices)
        return AbortOutcome(True, self.db.tasks[task_id], notices[1:])

    async def finish(
        self,
        task_id: str,
        *,
        owner: str,
        state: TaskState,
        result_json: str | None = None,
        error: ErrorInfo | None = None,
    ) -> TaskRecord | None:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.owner != owner or current.state not in FINISHABLE_STATES:
            return current
        record = self._put(
            current,
            state=state,
            result=None if result_json is None else json.loads(result_json),
            error=error,
            finished_at=utcnow(),
        )
        self._changed(task_id)
        return record

    async def get(self, task_id: str) -> TaskRecord | None:
        return self._step().get(task_id)

    async def events(self, task_id: str) -> list[TaskEvent]:
        tasks = self._step()
        return timeline(list(self.db.events.get(task_id, ())), tasks.get(task_id))

    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
        id_prefix: str | None = None,
        key: str | None = None,
    ) -> list[TaskRecord]:
        wanted = matching(self._step().values(), states, name, labels, id_prefix, key)
        wanted.sort(key=lambda r: r.id)
        wanted.sort(key=lambda r: r.created_at, reverse=True)
        return wanted[offset : offset + limit]

    async def list_ids(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        found = matching(self._step().values(), states, name, labels, None)
        return sorted(r.id for r in found if after is None or r.id > after)[:limit]

    async def count_tasks(self) -> dict[TaskState, int]:
        counts: dict[TaskState, int] = {}
        for record in self._step().values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.owner != owner or current.state not in FINISHABLE_STATES:
            return False
        self._put(
            current,
            progress=current.progress if progress is None else progress,
            message=current.message if message is None else message,
        )
        self._changed(task_id)  # its waiters wake (a stream shows the progress)
        return True

    async def mark_delivered(self, task_id: str, *, owner: str) -> None:
        tasks = self._step()
        current = tasks.get(task_id)
        if (
            current is None
            or current.owner != owner
            or current.state is not TaskState.ABORTING
            or current.abort_delivered_at is not None
        ):
            return
        self._put(current, abort_delivered_at=utcnow())
        self._changed(task_id)

    async def note_event(self, task_id: str, *, owner: str, kind: str, detail: str) -> bool:
        current = self._step().get(task_id)
        if current is None or current.owner != owner or current.state not in RUNNING_STATES:
            return False
        self.db.events.setdefault(task_id, []).append(TaskEvent(utcnow(), kind, owner, detail))
        return True

    # -- the rules, applied to records -------------------------------------------------------

    def _put(self, record: TaskRecord, **changes: Any) -> TaskRecord:
        updated = dataclasses.replace(record, **changes)
        self.db.tasks[record.id] = updated
        self.db.log_events(record, updated)  # the timeline, in the same step
        return updated

    def _abort(self, task_id: str, reason: AbortReason) -> TaskRecord:
        record = self.db.tasks[task_id]
        target = after_abort_request(record.state)
        assert target is not None, "only abortable records are aborted"
        finished = utcnow() if target.is_terminal else record.finished_at
        return self._put(record, state=target, reason=reason, finished_at=finished)

    def _abort_family(self, task_id: str, reason: AbortReason) -> tuple[AbortNotice, ...]:
        """Abort ``task_id`` and (unless the reason stays put) its unfinished descendants;
        the notices, the task's first."""
        record = self._abort(task_id, reason)
        child = parent_reason(task_id, reason)
        family = self._descendants(task_id) if cascades(reason) else []
        children = tuple(
            AbortNotice(kid.id, child, kid.attempts)
            for kid in (self._abort(d, child) for d in family)
        )
        return (AbortNotice(task_id, reason, record.attempts), *children)

    def _back_to_queue(self, record: TaskRecord, **more: Any) -> TaskRecord:
        cleared: dict[str, Any] = dict.fromkeys(REQUEUE_CLEARS)
        return self._put(record, state=TaskState.PENDING, **cleared, **more)

    def _aborted_parent(self, parent_id: str | None) -> AbortReason | None:
        parent = None if parent_id is None else self.db.tasks.get(parent_id)
        if parent is None or not cascades(parent.reason):
            return None
        if parent.reason is None or parent.state not in PARENT_ABORTED_STATES:
            return None
        return parent_reason(parent.id, parent.reason)

    def _descendants(self, task_id: str) -> list[str]:
        """Unfinished, abortable descendants of ``task_id``, nearest first."""
        found: list[str] = []
        frontier = [task_id]
        while frontier:
            parent = frontier.pop(0)
            for record in list(self.db.tasks.values()):
                if record.parent_id == parent and record.id not in found:
                    frontier.append(record.id)
                    if record.state in ABORTABLE_STATES:
                        found.append(record.id)
        return found
