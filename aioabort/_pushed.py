"""A store with a notifier beside it: every write commits to the store first, then what it
changed is published, best effort (guarantee G17); what the notifier brings reaches the
watcher as the store's own changes would.

What is published, and to whom:

* an abort request of a running task: to the process that owns it (its own subject), with
  the reason, so that process alone wakes and reads nothing; a queued task needs no push (it
  never runs), and it ended: see below;
* a task's end: on the subject of ends, which only processes with waiters subscribe to;
* new work on a queue: on that queue's subject, which only its workers subscribe to;
  these two only while some process says it listens (:mod:`._interest`).

The core knows the notifier only as :class:`aioabort.notifiers.Notifier`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Collection, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any

from . import _interest as interest
from ._backend import (
    AbortNotice,
    AbortOutcome,
    Change,
    ChangeCallback,
    Due,
    OwnerInfo,
    QuietOwner,
    StartResult,
    Store,
    StoreStatistics,
    Unclaimed,
    WatchedIds,
)
from ._interest import Interest
from ._push import Push
from ._state import TaskRecord, TaskState
from ._timeline import TaskEvent
from ._types import AbortReason, ErrorInfo
from .notifiers import Notifier, NotifierStatistics

_PREFIX = "aioabort"
_ENDS = f"{_PREFIX}.ends"
#: Ids in one message of ends, at most.
_ENDS_PER_MESSAGE = 500


def owner_subject(owner: str) -> str:
    """The subject of the abort requests meant for the process ``owner``."""
    return f"{_PREFIX}.owner.{owner}"


def queue_subject(queue: str) -> str:
    """The subject of new work on ``queue`` (a hash: any queue name is a valid subject)."""
    return f"{_PREFIX}.queue.{hashlib.md5(queue.encode()).hexdigest()[:20]}"


def abort_message(record: TaskRecord) -> bytes:
    reason = record.reason
    assert reason is not None
    return json.dumps(
        {**reason.to_dict(), "id": record.id, "attempt": record.attempts}, separators=(",", ":")
    ).encode()


def read_abort(payload: bytes) -> AbortNotice:
    data = json.loads(payload)
    reason = AbortReason(
        data["code"], data["message"], data["by"], datetime.fromisoformat(data["at"])
    )
    return AbortNotice(str(data["id"]), reason, data.get("attempt"))


class PushedStore(Store):
    """``store``, with ``notifier`` carrying its pushes for the process ``owner``."""

    def __init__(self, store: Store, notifier: Notifier, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.display_url = store.display_url
        self.poll_interval = store.poll_interval
        store.push_elsewhere()
        self.push = Push(notifier, self._on_message, self._on_connected)
        self.interest = Interest(owner, self.push.publish)
        self._subject = owner_subject(owner)
        self._on_change: ChangeCallback | None = None
        self._watched: WatchedIds = frozenset
        self._ends: list[str] = []
        self._checks: set[asyncio.Task[None]] = set()

    def notifier_statistics(self) -> NotifierStatistics:
        return dataclasses.replace(self.push.statistics(), held_back=self.interest.held_back)

    # -- life cycle and watching -------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        try:
            await self.push.start()
        except BaseException:
            await self.store.aclose()
            raise

    async def aclose(self) -> None:
        try:
            self.interest.leave()
            for task in list(self._checks):
                task.cancel()
            await self.push.stop()
        finally:
            await self.store.aclose()

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        await self.store.start_watching(on_change, watched)
        self._on_change, self._watched = on_change, watched
        await self.push.want({self._subject, interest.SUBJECT})
        self.interest.ask()

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:
        await self.store.subscribe(ends=ends, queues=queues)
        hinted = set(map(queue_subject, queues))
        if ends:
            hinted.add(_ENDS)
        await self.push.want({self._subject, interest.SUBJECT, *hinted})
        self.interest.mine(hinted)  # subscribed first, then said: nothing is missed

    def _on_connected(self) -> None:
        """Messages may have been missed: the store reads its changes now, and every waiter
        reads its record again."""
        self.store.poll_now()
        if self._on_change is not None:
            self._on_change(Change())
        self.interest.ask()  # who listens may have changed meanwhile

    def _on_message(self, subject: str, payload: bytes) -> None:
        on_change = self._on_change
        if on_change is None:
            return
        if subject == interest.SUBJECT:
            self.interest.heard(payload)
            return
        self.push.received += 1
        if subject == self._subject:
            notice = read_abort(payload)
            if notice.task_id in self._watched():
                on_change(Change((notice,), ids=frozenset((notice.task_id,))))
            else:  # not running here (yet?): the record says whether it is ours
                self._spawn_check(notice.task_id)
        elif subject == _ENDS:
            on_change(Change(ids=frozenset(map(str, json.loads(payload)))))
        else:  # a queue's subject: new work, no task changed
            on_change(Change(ids=frozenset()))

    def _spawn_check(self, task_id: str) -> None:
        self._spawn(self._check(task_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(self, task_id: str) -> None:
        """An abort for a task with no scope open here: delivered (and kept for its scope,
        a worker's claim a moment before) only if the record says this process runs it and
        it is aborting; otherwise ignored."""
        try:
            record = await self.store.get(task_id)
        except Exception:  # noqa: BLE001 - the store's poll delivers it if it is ours
            return
        if (
            record is None
            or record.owner != self.owner
            or record.state is not TaskState.ABORTING
            or record.reason is None
            or self._on_change is None
        ):
            self.push.ignored += 1
            return
        notice = AbortNotice(task_id, record.reason, record.attempts)
        self._on_change(Change((notice,), ids=frozenset((task_id,))))

    # -- publishing --------------------------------------------------------------------------

    def _published(self, record: TaskRecord | None) -> None:
        """What a write left ``record`` as, told to whoever needs to hear it."""
        if record is None:
            return
        if record.state.is_terminal:
            self._ended([record.id])
        elif record.state is TaskState.ABORTING and record.owner is not None:
            self.push.publish(owner_subject(record.owner), abort_message(record))
        elif record.state is TaskState.PENDING and record.queue is not None:
            self.interest.send(queue_subject(record.queue), record.queue.encode())

    def _ended(self, ids: Sequence[str]) -> None:
        """Ends are sent together: all those of one turn of the event loop in one message."""
        if not ids:
            return
        if not self._ends:
            asyncio.get_running_loop().call_soon(self._send_ends)
        self._ends.extend(ids)

    def _send_ends(self) -> None:
        ids, self._ends = self._ends, []
        for at in range(0, len(ids), _ENDS_PER_MESSAGE):
            self.interest.send(_ENDS, json.dumps(ids[at : at + _ENDS_PER_MESSAGE]).encode())

    def _aborted(self, outcome: AbortOutcome) -> None:
        if not outcome.recorded:
            return
        self._published(outcome.record)
        if outcome.children:  # their owners are on their records: read them off the write path
            self._spawn(self._children(outcome.children))

    async def _children(self, children: Sequence[AbortNotice]) -> None:
        for child in children:
            try:
                self._published(await self.store.get(child.task_id))
            except Exception:  # noqa: BLE001 - a hint lost: the owner's poll finds it
                return

    # -- writes that publish -----------------------------------------------------------------

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
        record = await self.store.create(
            task_id,
            name=name,
            queue=queue,
            args_json=args_json,
            parent_id=parent_id,
            retryable=retryable,
            labels=labels,
            not_before=not_before,
            expires_at=expires_at,
            time_limit=time_limit,
            key=key,
            supersede=supersede,
        )
        self._published(record)
        if supersede and key is not None:  # the runs it superseded hear of it off the write path
            self._spawn(self._superseded(key))
        return record

    async def _superseded(self, key: str) -> None:
        try:
            running = await self.store.list_tasks(states=[TaskState.ABORTING], key=key)
        except Exception:  # noqa: BLE001 - a hint lost: the owners' polls find them
            return
        for record in running:
            self._published(record)

    async def expire(
        self, task_ids: Collection[str] | None = None, *, by: str, limit: int = 1000
    ) -> list[str]:
        ids = await self.store.expire(task_ids, by=by, limit=limit)
        self._ended(ids)
        return ids

    async def retry(
        self, task_id: str, *, owner: str, not_before: datetime, error: ErrorInfo
    ) -> TaskRecord | None:
        record = await self.store.retry(task_id, owner=owner, not_before=not_before, error=error)
        self._published(record)
        return record

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        outcome = await self.store.request_abort(task_id, reason)
        self._aborted(outcome)
        return outcome

    async def request_aborts(
        self, task_ids: Sequence[str], reason: AbortReason
    ) -> list[AbortOutcome]:
        outcomes = await self.store.request_aborts(task_ids, reason)
        for outcome in outcomes:
            self._aborted(outcome)
        return outcomes

    async def finish(
        self,
        task_id: str,
        *,
        owner: str,
        state: TaskState,
        result_json: str | None = None,
        error: ErrorInfo | None = None,
    ) -> TaskRecord | None:
        record = await self.store.finish(
            task_id, owner=owner, state=state, result_json=result_json, error=error
        )
        if record is not None and record.owner == owner:
            self._published(record)
        return record

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        record = await self.store.requeue(task_id, owner=owner)
        self._published(record)
        return record

    async def reap(self, dead: Collection[str]) -> list[str]:
        ids = await self.store.reap(dead)
        self._ended(ids)  # ended as lost, or queued again: their waiters read them
        return ids

    async def release_owner(self, owner: str) -> list[str]:
        ids = await self.store.release_owner(owner)
        self._ended(ids)
        return ids

    # -- the rest, as the store does it ------------------------------------------------------

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
        return await self.store.start(
            task_id, owner=owner, name=name, parent_id=parent_id, adopt=adopt, labels=labels
        )

    async def claim(
        self,
        *,
        owner: str,
        queues: Collection[str],
        limit: int,
        names: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        return await self.store.claim(owner=owner, queues=queues, limit=limit, names=names)

    async def has_pending(
        self, queues: Collection[str], names: Collection[str] | None = None
    ) -> bool:
        return await self.store.has_pending(queues, names)

    async def next_due(self, queues: Collection[str], names: Collection[str] | None) -> Due:
        return await self.store.next_due(queues, names)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self.store.get(task_id)

    async def events(self, task_id: str) -> list[TaskEvent]:
        return await self.store.events(task_id)

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
        return await self.store.list_tasks(
            states=states,
            name=name,
            limit=limit,
            offset=offset,
            labels=labels,
            id_prefix=id_prefix,
            key=key,
        )

    async def list_ids(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        return await self.store.list_ids(
            states=states, name=name, labels=labels, after=after, limit=limit
        )

    async def count_tasks(self) -> dict[TaskState, int]:
        return await self.store.count_tasks()

    async def mark_delivered(self, task_id: str, *, owner: str) -> None:
        await self.store.mark_delivered(task_id, owner=owner)

    def scopes_open(self, any_open: bool) -> None:
        self.store.scopes_open(any_open)

    async def note_event(self, task_id: str, *, owner: str, kind: str, detail: str) -> bool:
        return await self.store.note_event(task_id, owner=owner, kind=kind, detail=detail)

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        return await self.store.report(task_id, owner=owner, progress=progress, message=message)

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        return await self.store.heartbeat(owner, lease=lease, quiet=quiet)

    async def owner_beats(self) -> dict[str, int]:
        return await self.store.owner_beats()

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        return await self.store.purge(older_than, limit=limit)

    async def serve(self, owner: str, *, queues: Collection[str], names: Collection[str]) -> None:
        await self.store.serve(owner, queues=queues, names=names)

    async def unserve(self, owner: str, *, queues: Collection[str]) -> None:
        await self.store.unserve(owner, queues=queues)

    async def unclaimed(self, *, queued_for: float, quiet: float) -> list[Unclaimed]:
        return await self.store.unclaimed(queued_for=queued_for, quiet=quiet)

    def statistics(self) -> StoreStatistics:
        return self.store.statistics()
