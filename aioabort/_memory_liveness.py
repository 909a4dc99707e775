"""The liveness side of :class:`~aioabort.testing.MemoryStore`: heartbeats, the reaper's
lease, reaping, the workers' published queues and retention (the memory store's
``_sqlliveness``). Each operation is one step on the event loop, as in the rest of the store.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Collection
from typing import Any

from ._backend import OwnerInfo, QuietOwner, Store, Unclaimed
from ._memory_records import MemoryDatabase
from ._state import (
    FINISHABLE_STATES,
    REAPABLE_STATES,
    TaskRecord,
    TaskState,
    reaped_error,
    released_error,
    requeue_after_loss,
)
from ._types import utcnow


class MemoryLiveness(Store, abc.ABC):
    """Liveness and retention over a :class:`MemoryDatabase` (mixed into ``MemoryStore``)."""

    db: MemoryDatabase

    @abc.abstractmethod
    def _step(self) -> dict[str, TaskRecord]: ...

    @abc.abstractmethod
    def _put(self, record: TaskRecord, **changes: Any) -> TaskRecord: ...

    @abc.abstractmethod
    def _back_to_queue(self, record: TaskRecord, **more: Any) -> TaskRecord: ...

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
                and r.finished_at.timestamp() <= cutoff
            ),
            key=lambda r: r.finished_at or utcnow(),
        )[:limit]
        for record in old:
            del tasks[record.id]
            self.db.events.pop(record.id, None)  # the timeline goes with its record
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
                and record.created_at.timestamp() <= cutoff
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
