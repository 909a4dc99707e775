"""The SQL store: each operation's flow written once, over a small connection protocol.

A dialect supplies its statements in one named-query file (``sql/sqlite.sql``,
``sql/postgres.sql``: the same names, the same numbered parameters, apart from the names each
file declares as its own) and its driver supplies three things (:mod:`._sqlbase`): a write
transaction, a single statement, and how timestamps come back. Rules that
:mod:`aioabort._state` owns (guards, the requeue rule, the lost-task error, the columns a
requeue clears) are put into the statements at load time (:mod:`.sql`), never retyped in SQL.

This module holds the flows of a task's record (create, start, abort, finish, read);
:mod:`._sqlqueue` those of the queue (next due, claim, expire, requeue); :mod:`._sqlliveness`
those of liveness and retention. A dialect may override an operation
where one statement of its own beats the shared flow, as a named exception that runs a query
only its file has (declared in the file's header): PostgreSQL's one-round-trip
:meth:`request_abort` and its one-statement heartbeat, SQLite's purge.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from .._backend import AbortNotice, AbortOutcome, StartResult
from .._errors import TaskAlreadyExists
from .._state import (
    StartDecision,
    TaskRecord,
    TaskState,
    cascades,
    decide_start,
    parent_reason,
    superseded_reason,
)
from .._timeline import TaskEvent, timeline
from .._types import AbortReason, ErrorInfo, default_by, utcnow
from ._batch import Finish, GroupCommit, NewTask
from ._sqlbase import SCHEMA_VERSION, Connection, Row
from ._sqlliveness import LivenessFlows
from ._sqlqueue import QueueFlows

__all__ = ["SCHEMA_VERSION", "Connection", "Row", "SQLStore"]


class SQLStore(LivenessFlows, QueueFlows):
    """A store over SQL: the flows of every operation; a driver subclass connects.

    A subclass sets :attr:`dialect`, fills :attr:`queries` (``sql/<dialect>.sql``, loaded by
    :func:`aioabort.backends.sql.load_queries`), and implements ``_transaction``,
    ``_statement`` and ``_timestamp`` (and the watching side of the contract).

    **A flow awaits only its connection.** The body a flow hands to ``_transaction`` awaits
    nothing but the statements it runs on the :class:`Connection` it is given: no sleep, no
    other store call, no lock. SQLite runs each body whole in its connection's thread, where
    nothing else can be awaited (``sqlite.py``); a body that awaits anything else fails there.
    """

    def __init__(self, url: str, *, poll_interval: float | None = None) -> None:
        super().__init__(url, poll_interval=poll_interval)
        self._finishes = GroupCommit(self._finish_batch)
        self._creates = GroupCommit(self._create_batch)

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
        new = NewTask(
            task_id,
            name,
            queue,
            args_json,
            retryable,
            labels or None,
            not_before,
            expires_at,
            time_limit,
            key,
        )
        if parent_id is None and not supersede:
            return await self._creates(new)
        touched: list[str] = []

        async def body(conn: Connection) -> TaskRecord:
            touched.clear()
            earlier: list[str] = []
            if supersede and key is not None:  # one producer of the key at a time
                await self._rows(conn, "lock_key", key)
                earlier = [row[0] for row in await self._rows(conn, "keyed_live", key, task_id)]
            inherited = await self._parent_abort(conn, parent_id)
            row = await self._row(conn, "insert_pending", task_id, *_pending_values(new, parent_id))
            if row is None:
                raise TaskAlreadyExists(task_id)
            record = await self._labelled(conn, self._record(row), labels)
            if inherited is not None:  # born into an aborted family: never runs
                record = await self._abort_one(conn, task_id, inherited) or record
            if earlier:
                touched.extend(await self._supersede(conn, earlier, task_id))
            return record

        # A lost reply could hide a commit: the caller gets a clear error, never a duplicate.
        return await self._write(body, retry=False, changed=lambda r: (r.id, *touched))

    async def _supersede(self, conn: Connection, earlier: list[str], new_id: str) -> list[str]:
        """Abort the unfinished tasks ``earlier`` of a key (and their children): ``new_id``
        supersedes them. The ids it changed."""
        reason = superseded_reason(new_id, default_by())
        rows = await self._rows(
            conn, "abort_tasks", earlier, reason.code, reason.message, reason.by, reason.at
        )
        records = {row[0]: self._record(row) for row in rows}
        parents = []
        if records:
            parents = [row[0] for row in await self._rows(conn, "parents_among", list(records))]
        outcomes = await self._cascade(conn, records, parents, reason)
        return [i for outcome in outcomes.values() for i in _abort_ids(outcome)]

    async def _create_batch(self, items: list[NewTask]) -> list[TaskRecord | BaseException]:
        # An id twice in one batch (producers racing on it): the first is the one inserted,
        # with its own labels; the others are refused as if they came a moment later.
        first = {i.task_id: i for i in reversed(items)}
        unique = [i for i in items if first[i.task_id] is i]
        batch = [
            [
                i.task_id,
                i.name,
                i.queue,
                i.args_json,
                i.retryable,
                _epoch(i.not_before),
                _epoch(i.expires_at),
                i.time_limit,
                i.key,
            ]
            for i in unique
        ]
        if not any(i.labels for i in unique):  # one statement
            rows = await self._one("insert_pending_batch", batch, write=True)
            made = {row[0]: self._record(row) for row in rows}
        else:
            wanted = {i.task_id: i.labels for i in unique if i.labels}

            async def body(conn: Connection) -> dict[str, TaskRecord]:
                rows = await self._rows(conn, "insert_pending_batch", batch)
                records = {row[0]: self._record(row) for row in rows}
                mine = [[i, dict(wanted[i])] for i in records if i in wanted]  # created here
                if mine:
                    await self._rows(conn, "set_labels", mine)
                    await self._rows(conn, "insert_labels", mine)
                    for task_id, labels in mine:
                        records[task_id] = dataclasses.replace(records[task_id], labels=labels)
                return records

            made = await self._write(body, retry=False, changed=lambda r: list(r))
        results: list[TaskRecord | BaseException] = []
        for item in items:
            record = made.get(item.task_id) if first[item.task_id] is item else None
            results.append(record if record is not None else TaskAlreadyExists(item.task_id))
        return results

    async def _labelled(
        self, conn: Connection, record: TaskRecord, labels: Mapping[str, str] | None
    ) -> TaskRecord:
        """Give a record this transaction just created its labels."""
        if not labels:
            return record
        pair = [[record.id, dict(labels)]]
        await self._rows(conn, "set_labels", pair)
        await self._rows(conn, "insert_labels", pair)
        return dataclasses.replace(record, labels=dict(labels))

    async def _parent_abort(self, conn: Connection, parent_id: str | None) -> AbortReason | None:
        """The reason a child of ``parent_id`` is aborted with, if the parent is aborting."""
        if parent_id is None:
            return None
        row = await self._row(conn, "parent_abort", parent_id)
        reason = None if row is None else self._reason(row)
        return None if reason is None else parent_reason(parent_id, reason)

    async def _abort_one(
        self, conn: Connection, task_id: str, reason: AbortReason
    ) -> TaskRecord | None:
        row = await self._row(
            conn, "abort_task", task_id, reason.code, reason.message, reason.by, reason.at
        )
        if row is None:
            return None
        await self._rows(conn, "log_aborts", [task_id])
        return self._record(row)

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
        attempts: list[None] = []  # more than one: a retry after a lost connection

        async def body(conn: Connection) -> StartResult:
            attempts.append(None)
            row = await self._row(conn, "get_task_for_update", task_id)
            current = None if row is None else self._record(row)
            decision = _decide(current, adopt=adopt)
            if (
                current is not None
                and decision is StartDecision.ALREADY_STARTED
                and len(attempts) > 1
                and current.owner == owner
            ):
                # Started by this very call on a connection that died before replying.
                return StartResult(StartDecision.START, current)
            if decision is StartDecision.CREATE:
                inherited = await self._parent_abort(conn, parent_id)
                row = await self._row(conn, "insert_started", task_id, name, parent_id, owner)
                if row is None:  # created by someone else since our read: look again
                    row = await self._row(conn, "get_task", task_id)
                    assert row is not None
                    other = self._record(row)
                    return StartResult(_decide(other, adopt=adopt), other)
                record = await self._labelled(conn, self._record(row), labels)
                if inherited is not None:  # started under an aborting parent: aborting
                    record = await self._abort_one(conn, task_id, inherited) or record
                return StartResult(decision, record)
            if decision is StartDecision.START:
                row = await self._row(conn, "start_pending", task_id, owner, name)
                assert row is not None  # read in this transaction, and locked
                return StartResult(decision, self._record(row))
            assert current is not None
            return StartResult(decision, current)

        return await self._write(body, retry=True, changed=lambda _: (task_id,))

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        async def body(conn: Connection) -> AbortOutcome:
            row = await self._row(
                conn, "abort_task", task_id, reason.code, reason.message, reason.by, reason.at
            )
            if row is None:
                found = await self._row(conn, "get_task", task_id)
                return abort_found(None if found is None else self._record(found), reason)
            outcomes = await self._cascade(conn, {task_id: self._record(row)}, [task_id], reason)
            return outcomes[task_id]

        return await self._write(body, retry=True, changed=_abort_ids)

    async def request_aborts(
        self, task_ids: Sequence[str], reason: AbortReason
    ) -> list[AbortOutcome]:
        """The batch in one transaction: one update for every id, the descendants of those
        that have children, one log insert (a few statements, not a few per id)."""
        ids = list(dict.fromkeys(task_ids))
        attempts: list[None] = []  # more than one: a retry after a lost connection

        async def body(conn: Connection) -> dict[str, AbortOutcome]:
            attempts.append(None)
            rows = await self._rows(
                conn, "abort_tasks", ids, reason.code, reason.message, reason.by, reason.at
            )
            records = {row[0]: self._record(row) for row in rows}
            parents = []
            if records and cascades(reason):
                parents = [row[0] for row in await self._rows(conn, "parents_among", list(records))]
            outcomes = await self._cascade(conn, records, parents, reason)
            for task_id in ids:
                if task_id not in outcomes:
                    found = None
                    if len(attempts) > 1:  # a retry: the first attempt may have committed
                        found = await self._row(conn, "get_task", task_id)
                    outcomes[task_id] = abort_found(
                        None if found is None else self._record(found), reason
                    )
            return outcomes

        done = await self._write(
            body,
            retry=True,
            changed=lambda found: [i for o in found.values() for i in _abort_ids(o)],
        )
        outcomes, seen = [], set()
        for task_id in task_ids:  # a repeated id: recorded once, as one request after another
            outcome = done[task_id]
            if task_id in seen and outcome.recorded:
                outcome = AbortOutcome(False, outcome.record)
            seen.add(task_id)
            outcomes.append(outcome)
        return outcomes

    async def _cascade(
        self,
        conn: Connection,
        aborted: Mapping[str, TaskRecord],
        parents: Iterable[str],
        reason: AbortReason,
    ) -> dict[str, AbortOutcome]:
        """After ``aborted`` recorded ``reason``: abort the unfinished descendants of each of
        ``parents`` (those of them that may have children) with code ``parent``, unless the
        reason does not cascade, and log every abort for watchers in one statement. The
        outcome of each of ``aborted``, with its children."""
        outcomes: dict[str, AbortOutcome] = {}
        logged = list(aborted)
        for parent in parents if cascades(reason) else ():
            child = parent_reason(parent, reason)
            kids = await self._rows(
                conn, "abort_descendants", parent, child.code, child.message, child.by, child.at
            )
            logged += [kid[0] for kid in kids]
            notices = tuple(AbortNotice(kid[0], child, kid[1]) for kid in kids)
            outcomes[parent] = AbortOutcome(True, aborted[parent], notices)
        if logged:
            await self._rows(conn, "log_aborts", logged)
        for task_id, record in aborted.items():
            outcomes.setdefault(task_id, AbortOutcome(True, record))
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
        error_json = None if error is None else error.to_json()
        return await self._finishes(Finish(task_id, owner, state, result_json, error_json))

    async def _finish_batch(self, items: list[Finish]) -> list[TaskRecord | BaseException | None]:
        rows = await self._one(
            "finish_batch",
            [[i.task_id, i.owner, i.state.value, i.result_json, i.error_json] for i in items],
            write=True,
            retry=True,
        )
        done = {row[0]: self._record(row) for row in rows}
        results: list[TaskRecord | BaseException | None] = []
        for item in items:
            record = done.get(item.task_id)
            results.append(record if record is not None else await self.get(item.task_id))
        return results

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self._one("get_task", task_id)
        return self._record(rows[0]) if rows else None

    async def events(self, task_id: str) -> list[TaskEvent]:
        rows = await self._one("events", task_id)
        stored = [TaskEvent(self._timestamp(at) or utcnow(), k, by, d) for at, k, by, d in rows]
        return timeline(stored, await self.get(task_id))

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
        wanted = [TaskState(s).value for s in states] if states else None
        rows = await self._one(
            "list_tasks",
            wanted,
            name,
            limit,
            offset,
            json.dumps(dict(labels)) if labels else None,
            id_prefix or None,
            key,
        )
        return [self._record(row) for row in rows]

    async def list_ids(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        wanted = [TaskState(s).value for s in states] if states else None
        rows = await self._one(
            "list_ids",
            wanted,
            name,
            limit,
            after or "",  # every id sorts after ""
            json.dumps(dict(labels)) if labels else None,
            None,
            None,
            retry=True,  # a read, safe to repeat: a lost connection costs a retry, not the call
        )
        return [row[0] for row in rows]

    async def count_tasks(self) -> dict[TaskState, int]:
        return {TaskState(state): int(n) for state, n in await self._one("count_tasks")}

    async def mark_delivered(self, task_id: str, *, owner: str) -> None:
        await self._one("mark_delivered", task_id, owner, write=True, retry=True)

    async def note_event(self, task_id: str, *, owner: str, kind: str, detail: str) -> bool:
        return bool(await self._one("note_event", task_id, owner, kind, detail, write=True))

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        rows = await self._one(
            "report", task_id, owner, progress, message, write=True, retry=True
        )  # its waiters wake (a stream shows the progress)
        return bool(rows)


def _pending_values(new: NewTask, parent_id: str | None) -> list[object]:
    """``insert_pending``'s parameters after the id."""
    return [
        new.name,
        new.queue,
        parent_id,
        new.args_json,
        new.retryable,
        new.not_before,
        new.expires_at,
        new.time_limit,
        new.key,
    ]


def _epoch(value: datetime | None) -> float | None:
    """A time as seconds since the epoch, as the stores' JSON batches carry it."""
    return None if value is None else value.timestamp()


def _abort_ids(outcome: AbortOutcome) -> list[str]:
    """The ids an abort changed: its task (if it recorded anything) and the children."""
    if not outcome.recorded or outcome.record is None:
        return []
    return [outcome.record.id, *(child.task_id for child in outcome.children)]


def abort_found(record: TaskRecord | None, reason: AbortReason) -> AbortOutcome:
    """The outcome of an abort request that changed nothing, given the record as it is now.
    It was recorded all the same when the record carries this very request (its time is
    part of it): our own write, committed on a connection that died before replying."""
    return AbortOutcome(record is not None and record.reason == reason, record)


def _decide(record: TaskRecord | None, *, adopt: bool = True) -> StartDecision:
    return decide_start(
        None if record is None else record.state,
        ever_started=record is not None and record.started_at is not None,
        adopt=adopt,
    )
