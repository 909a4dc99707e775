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
import math
import time
from collections.abc import Collection, Mapping
from typing import Any

from ._backend import (
    AbortNotice,
    AbortOutcome,
    ChangeCallback,
    OwnerInfo,
    QuietOwner,
    StartResult,
    Store,
    StoreStatistics,
    Unclaimed,
    WatchedIds,
)
from ._errors import AppClosed, InvalidURL, TaskAlreadyExists
from ._memory_records import NAMED, MemoryDatabase, claimable, matching, new_record
from ._state import (
    ABORTABLE_STATES,
    FINISHABLE_STATES,
    PARENT_ABORTED_STATES,
    REAPABLE_STATES,
    REQUEUE_CLEARS,
    StartDecision,
    TaskRecord,
    TaskState,
    after_abort_request,
    cascades,
    decide_start,
    parent_reason,
    reaped_error,
    released_error,
    requeue_after_loss,
)
from ._types import AbortReason, ErrorInfo, utcnow


class MemoryStore(Store):
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
    ) -> TaskRecord:
        tasks = self._step()
        if task_id in tasks:
            raise TaskAlreadyExists(task_id)
        record = new_record(
            task_id,
            name=name,
            state=TaskState.PENDING,
            parent_id=parent_id,
            queue=queue,
            args=None if args_json is None else json.loads(args_json),
            retryable=retryable,
            labels=dict(labels or {}),
        )
        self.db.insert(record)
        inherited = self._aborted_parent(parent_id)
        if inherited is not None:  # born into an aborted family: never runs
            record = self._abort(task_id, inherited)
            self.db.announce((), (AbortNotice(task_id, inherited, record.attempts),))
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
        tasks = self._step()
        waiting = sorted(
            (r for r in tasks.values() if claimable(r, queues, names)),
            key=lambda r: (r.created_at, self.db.order[r.id]),
        )
        now = utcnow()
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
        tasks = self._step()
        return any(claimable(r, queues, names) for r in tasks.values())

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.owner != owner or current.state not in FINISHABLE_STATES:
            return current
        record = self._back_to_queue(current)
        self._changed(task_id)
        return record

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        tasks = self._step()
        current = tasks.get(task_id)
        if current is None or current.state not in ABORTABLE_STATES:
            return AbortOutcome(False, current)
        record = self._abort(task_id, reason)
        child = parent_reason(task_id, reason)
        family = self._descendants(task_id) if cascades(reason) else []
        children = tuple(
            AbortNotice(kid.id, child, kid.attempts)
            for kid in (self._abort(d, child) for d in family)
        )
        self.db.announce((), (AbortNotice(task_id, reason, record.attempts), *children))
        return AbortOutcome(True, record, children)

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

    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
        id_prefix: str | None = None,
    ) -> list[TaskRecord]:
        wanted = matching(self._step().values(), states, name, labels, id_prefix)
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

    # -- liveness ----------------------------------------------------------------------------

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        self._step()
        db, now = self.db, time.monotonic()
        db.beats[owner.id] = db.beats.get(owner.id, 0) + 1
        db.last_seen[owner.id] = now
        if lease is None:
            return None
        if db.lease is not None and db.lease[0] != owner.id and db.lease[1] >= now:
            return None
        db.lease = (owner.id, now + lease)
        seen = {o: db.last_seen.get(o, now) for o in db.beats}
        return {
            o: QuietOwner(n, now - seen[o]) for o, n in db.beats.items() if seen[o] < now - quiet
        }

    async def owner_beats(self) -> dict[str, int]:
        self._step()
        return dict(self.db.beats)

    async def reap(self, dead: Collection[str]) -> list[str]:
        tasks = self._step()
        gone = set(dead)
        lost = [
            r
            for r in tasks.values()
            if r.state in REAPABLE_STATES
            and (r.owner is None or r.owner in gone or r.owner not in self.db.beats)
        ]
        ids = []
        for record in lost:
            if requeue_after_loss(record):
                self._back_to_queue(record)
            else:
                self._put(
                    record,
                    state=TaskState.FAILURE,
                    error=reaped_error(record.owner),
                    finished_at=utcnow(),
                )
            ids.append(record.id)
        for owner in gone:
            self.db.beats.pop(owner, None)
            self.db.last_seen.pop(owner, None)
            self.db.serving.pop(owner, None)
        if ids:
            self.db.announce(ids)
        return ids

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        tasks = self._step()
        cutoff = utcnow().timestamp() - older_than
        old = sorted(
            (
                r
                for r in tasks.values()
                if r.state.is_terminal
                and r.finished_at is not None
                and r.finished_at.timestamp() < cutoff
            ),
            key=lambda r: r.finished_at or utcnow(),
        )[:limit]
        for record in old:
            del tasks[record.id]
            self.db.order.pop(record.id, None)
        if old:
            self.db.announce(r.id for r in old)
        return [r.id for r in old]

    async def serve(self, owner: str, *, queues: Collection[str], names: Collection[str]) -> None:
        self._step()
        self.db.serving.setdefault(owner, set()).update((q, n) for q in queues for n in names)

    async def unserve(self, owner: str, *, queues: Collection[str]) -> None:
        self._step()
        stopped = set(queues)
        mine = self.db.serving.get(owner, set())
        mine.difference_update({pair for pair in mine if pair[0] in stopped})

    async def unclaimed(self, *, queued_for: float, quiet: float) -> list[Unclaimed]:
        tasks, db = self._step(), self.db
        seen_after = time.monotonic() - quiet
        served = {
            pair
            for owner, pairs in db.serving.items()
            if db.last_seen.get(owner, -math.inf) >= seen_after
            for pair in pairs
        }
        cutoff = utcnow().timestamp() - queued_for
        groups: dict[tuple[str, str], list[TaskRecord]] = {}
        for record in tasks.values():
            if record.queue is None:  # made by create(): it waits for a scope, not a worker
                continue
            key = (record.queue, record.name or "")
            if (
                record.state is TaskState.PENDING
                and record.created_at.timestamp() < cutoff
                and key not in served
            ):
                groups.setdefault(key, []).append(record)
        found = [
            Unclaimed(queue, name, len(group), min(r.created_at for r in group))
            for (queue, name), group in groups.items()
        ]
        return sorted(found, key=lambda u: (u.oldest, u.queue, u.name))

    async def release_owner(self, owner: str) -> list[str]:
        tasks = self._step()
        mine = [r for r in tasks.values() if r.owner == owner and r.state in FINISHABLE_STATES]
        for record in mine:
            self._put(
                record, state=TaskState.FAILURE, error=released_error(owner), finished_at=utcnow()
            )
        self.db.beats.pop(owner, None)
        self.db.last_seen.pop(owner, None)
        self.db.serving.pop(owner, None)
        if self.db.lease is not None and self.db.lease[0] == owner:
            self.db.lease = None
        if mine:
            self.db.announce(r.id for r in mine)
        return [r.id for r in mine]

    # -- the rules, applied to records -------------------------------------------------------

    def _put(self, record: TaskRecord, **changes: Any) -> TaskRecord:
        updated = dataclasses.replace(record, **changes)
        self.db.tasks[record.id] = updated
        return updated

    def _abort(self, task_id: str, reason: AbortReason) -> TaskRecord:
        record = self.db.tasks[task_id]
        target = after_abort_request(record.state)
        assert target is not None, "only abortable records are aborted"
        finished = utcnow() if target.is_terminal else record.finished_at
        return self._put(record, state=target, reason=reason, finished_at=finished)

    def _back_to_queue(self, record: TaskRecord) -> TaskRecord:
        cleared: dict[str, Any] = dict.fromkeys(REQUEUE_CLEARS)
        return self._put(record, state=TaskState.PENDING, **cleared)

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
