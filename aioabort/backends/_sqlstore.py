"""The SQL store: each operation's flow written once, over a small connection protocol.

A dialect supplies its statements in one named-query file (``sql/sqlite.sql``,
``sql/postgres.sql``: the same names, the same numbered parameters) and its driver supplies
three things: a write transaction, a single statement, and how timestamps come back. Rules
that :mod:`aioabort._state` owns (guards, the requeue rule, the lost-task error, the columns a
requeue clears) are put into the statements at load time, never retyped in SQL.

Statements are counted here, in :meth:`SQLStore._rows`, for every caller. Local writes are
announced here (:meth:`SQLStore._write`), which is the store's duty towards ``handle.wait()``.
A dialect may override an operation where one statement beats the generic flow; PostgreSQL's
one-round-trip :meth:`request_abort` is that exception.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, ClassVar, Protocol, TypeVar

from .._backend import (
    AbortNotice,
    AbortOutcome,
    Change,
    ChangeCallback,
    Finish,
    NewTask,
    OwnerInfo,
    QuietOwner,
    StartResult,
    Store,
    StoreStatistics,
    Unclaimed,
)
from .._errors import StoreUnavailable, TaskAlreadyExists
from .._state import (
    StartDecision,
    TaskRecord,
    TaskState,
    cascades,
    decide_start,
    parent_reason,
)
from .._types import AbortReason, ErrorInfo
from . import _sql
from ._batch import GroupCommit
from ._ddl import table_columns

T = TypeVar("T")

#: The schema version both dialects create; a newer one in the database is refused, an older
#: one migrated (columns the tables lack are added, then every statement of the schema runs:
#: they are "IF NOT EXISTS"). 2: an index on updated_at. 3: the reaper lease, and an index
#: on the owners' last beat. 4: ``abort_delivered_at`` (a column). 5: an index on
#: ``finished_at`` (retention). 6: labels (a column, and the ``task_labels`` table their
#: filters go through). 7: the ``workers`` table (what each live
#: worker claims, for :meth:`~aioabort.Store.unclaimed`), and an index on ``created_at`` (a
#: page of the newest records reads 51 rows, not the table).
SCHEMA_VERSION = 7
#: How many abort-log entries are kept (watchers read only entries newer than their start);
#: pruned by sequence number, so no clock is involved.
ABORT_LOG_KEEP = 100_000

Row = Sequence[Any]


class Connection(Protocol):
    """What a flow needs of a connection inside a transaction: run one statement."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> Sequence[Row]: ...


_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def load_queries(dialect: str, values: dict[str, str]) -> dict[str, str]:
    """The named queries of ``sql/<dialect>.sql``, with ``{placeholders}`` filled from
    ``values``, or with a query named earlier in the file (a fragment several queries share,
    such as their filters). An unknown placeholder is a bug in the file, and fails loudly."""
    text = resources.files(__package__).joinpath(f"sql/{dialect}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";")

        def fill(match: re.Match[str], query: str = name) -> str:
            key = match.group(1)
            found = values.get(key, queries.get(key))
            if found is None:
                raise KeyError(f"{dialect}.sql, query {query}: unknown placeholder {{{key}}}")
            return found

        queries[name] = _PLACEHOLDER.sub(fill, sql)
    return queries


def rule_values(json_object: str) -> dict[str, str]:
    """The placeholders both dialects share, generated from :mod:`aioabort._state`.

    :param json_object: the dialect's JSON object constructor, ``{}`` standing for its
        arguments (``json_object({})``, ``json_build_object({})::text``).
    """
    return {
        "all_states": _sql.in_list(list(TaskState)),
        "running": _sql.RUNNING,
        "abortable": _sql.ABORTABLE,
        "parent_aborted": _sql.PARENT_ABORTED,
        "non_cascading": _sql.NON_CASCADING,
        "terminal": _sql.TERMINAL,
        "abort_case": _sql.abort_case(),
        "columns": _sql.COLUMNS,
        "requeue_reset": _sql.requeue_reset(),
        "requeue_when": _sql.requeue_when(),
        "reaped_error": _sql.lost_error(json_object, reaped=True),
        "released_error": _sql.lost_error(json_object, reaped=False),
    }


class SQLStore(Store, abc.ABC):
    """A store over SQL: the flows of every operation; a driver subclass connects.

    Subclasses set :attr:`dialect`, fill :attr:`queries` with :func:`load_queries`, and
    implement :meth:`_transaction`, :meth:`_statement`, :meth:`_timestamp` (and the watching
    side of the contract).
    """

    #: The named-query file: ``sql/<dialect>.sql``.
    dialect: ClassVar[str]

    def __init__(self) -> None:
        self.queries: dict[str, str] = {}
        self._statements = 0
        self._on_change: ChangeCallback | None = None
        self._finishes = GroupCommit(self._finish_batch)
        self._creates = GroupCommit(self._create_batch)

    # -- what a driver provides --------------------------------------------------------------

    @abc.abstractmethod
    async def _transaction(self, body: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        """Run ``body`` in one write transaction (committed, or rolled back on any error).

        :param retry: the writes are safe to repeat (compare-and-sets): the driver may run
            the body again on a fresh connection after losing one.
        """

    @abc.abstractmethod
    async def _statement(
        self, sql: str, args: Sequence[Any], *, write: bool, retry: bool
    ) -> list[Row]:
        """Run one statement on its own (its own implicit transaction) and return its rows."""

    @abc.abstractmethod
    def _timestamp(self, value: Any) -> datetime | None:
        """A stored timestamp as an aware datetime."""

    def _param(self, value: Any) -> Any:
        """A flow's argument as the driver takes it: lists as JSON arrays."""
        if isinstance(value, list | tuple):
            return json.dumps(value)
        return value

    # -- running statements ------------------------------------------------------------------

    async def _rows(self, conn: Connection, name: str, *args: Any) -> list[Row]:
        """Run the named query on ``conn`` (inside a flow's transaction)."""
        self._statements += 1
        return list(await conn.fetch(self.queries[name], [self._param(a) for a in args]))

    async def _row(self, conn: Connection, name: str, *args: Any) -> Row | None:
        rows = await self._rows(conn, name, *args)
        return rows[0] if rows else None

    async def _one(
        self,
        name: str,
        *args: Any,
        write: bool = False,
        retry: bool = False,
        changed: Callable[[list[Row]], Collection[str]] | None = None,
    ) -> list[Row]:
        """Run the named query as a statement of its own; a write announces the ids
        ``changed(rows)`` names (by default the first column of the rows it returned)."""
        self._statements += 1
        rows = await self._statement(
            self.queries[name], [self._param(a) for a in args], write=write, retry=retry
        )
        if write:
            self._changed(changed(rows) if changed is not None else [row[0] for row in rows])
        return rows

    async def _write(
        self,
        body: Callable[[Connection], Awaitable[T]],
        *,
        retry: bool,
        changed: Callable[[T], Collection[str]],
    ) -> T:
        """A flow's transaction; once committed, the ids ``changed(result)`` names are
        announced here (guarantee G13: only their waiters wake)."""
        result = await self._transaction(body, retry=retry)
        self._changed(changed(result))
        return result

    def _changed(self, ids: Collection[str]) -> None:
        if self._on_change is not None and ids:
            self._on_change(Change(ids=frozenset(ids)))

    def _record(self, row: Row) -> TaskRecord:
        return _sql.record_from_row(tuple(row)[: _sql.COLUMN_COUNT], self._timestamp)

    def _reason(self, row: Row) -> AbortReason | None:
        return _sql.reason_from(row[0], row[1], row[2], self._timestamp(row[3]))

    def notices(self, rows: Sequence[Row]) -> list[AbortNotice]:
        """Rows of ``aborts_of`` (id, code, message, by, at, attempts) as abort notices."""
        found = []
        for row in rows:
            reason = self._reason(row[1:5])
            if reason is not None:
                found.append(AbortNotice(row[0], reason, row[5]))
        return found

    # -- schema ------------------------------------------------------------------------------

    async def _ensure_schema(self) -> None:
        """Create the schema, or bring an older one up to date, before anything is written.

        A store is judged by its columns, not only by its version stamp: a store stamped
        with this version by a release that forgot a column (the oldest schema 1 had no
        ``beats``) is repaired too. Every column the ``schema`` statements name and the
        tables lack is added (with the definition written there), then the statements run
        (``IF NOT EXISTS``: they add what is missing and leave the rest)."""

        async def body(conn: Connection) -> None:
            await self._rows(conn, "lock_schema")
            exists = await self._row(conn, "schema_exists")
            if exists is not None and exists[0]:
                found = await self._row(conn, "schema_version")
                version = int(found[0]) if found is not None else 0
                if version > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"the store {self.display_url} has schema version {version}, newer "
                        f"than this aioabort supports ({SCHEMA_VERSION}): upgrade aioabort"
                    )
                missing, complete = await self._missing_columns(conn)
                if version == SCHEMA_VERSION and complete and not missing:
                    return
                for table, definition in missing:  # (DDL from the dialect's own file)
                    self._statements += 1
                    await conn.fetch(f"ALTER TABLE {table} ADD COLUMN {definition}", [])
            for statement in self.queries["schema"].split(";"):
                if statement.strip():
                    self._statements += 1
                    await conn.fetch(statement, [])
            await self._rows(conn, "set_schema_version", str(SCHEMA_VERSION))

        await self._transaction(body, retry=True)

    async def _missing_columns(self, conn: Connection) -> tuple[list[tuple[str, str]], bool]:
        """The columns the existing tables lack, as ``(table, definition)``, and whether every
        table of the schema exists."""
        present: dict[str, set[str]] = {}
        for table, column in await self._rows(conn, "columns"):
            present.setdefault(table, set()).add(column)
        wanted = table_columns(self.queries["schema"])
        missing = [
            (table, definition)
            for table, columns in wanted.items()
            if table in present
            for column, definition in columns.items()
            if column not in present[table]
        ]
        return missing, wanted.keys() <= present.keys()

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
        if parent_id is None:
            return await self._creates(
                NewTask(task_id, name, queue, args_json, retryable, labels or None)
            )

        async def body(conn: Connection) -> TaskRecord:
            inherited = await self._parent_abort(conn, parent_id)
            row = await self._row(
                conn, "insert_pending", task_id, name, queue, parent_id, args_json, retryable
            )
            if row is None:
                raise TaskAlreadyExists(task_id)
            record = await self._labelled(conn, self._record(row), labels)
            if inherited is not None:  # born into an aborted family: never runs
                record = await self._abort_one(conn, task_id, inherited) or record
            return record

        # A lost reply could hide a commit: the caller gets a clear error, never a duplicate.
        return await self._write(body, retry=False, changed=lambda r: (r.id,))

    async def _create_batch(self, items: list[NewTask]) -> list[TaskRecord | BaseException]:
        # An id twice in one batch (producers racing on it): the first is the one inserted,
        # with its own labels; the others are refused as if they came a moment later.
        first = {i.task_id: i for i in reversed(items)}
        unique = [i for i in items if first[i.task_id] is i]
        batch = [[i.task_id, i.name, i.queue, i.args_json, i.retryable] for i in unique]
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
        child = parent_reason(task_id, reason)

        async def body(conn: Connection) -> AbortOutcome:
            row = await self._row(
                conn, "abort_task", task_id, reason.code, reason.message, reason.by, reason.at
            )
            if row is None:
                found = await self._row(conn, "get_task", task_id)
                current = None if found is None else self._record(found)
                # Our own request, committed on a connection that died before replying:
                recorded = current is not None and current.reason == reason
                return AbortOutcome(recorded, current)
            kids = (
                await self._rows(
                    conn,
                    "abort_descendants",
                    task_id,
                    child.code,
                    child.message,
                    child.by,
                    child.at,
                )
                if cascades(reason)
                else []
            )
            await self._rows(conn, "log_aborts", [task_id, *(kid[0] for kid in kids)])
            notices = tuple(AbortNotice(kid[0], child, kid[1]) for kid in kids)
            return AbortOutcome(True, self._record(row), notices)

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
            outcomes: dict[str, AbortOutcome] = {}
            logged = list(records)
            if records and cascades(reason):
                for parent in await self._rows(conn, "parents_among", list(records)):
                    child = parent_reason(parent[0], reason)
                    kids = await self._rows(
                        conn,
                        "abort_descendants",
                        parent[0],
                        child.code,
                        child.message,
                        child.by,
                        child.at,
                    )
                    logged += [kid[0] for kid in kids]
                    notices = tuple(AbortNotice(kid[0], child, kid[1]) for kid in kids)
                    outcomes[parent[0]] = AbortOutcome(True, records[parent[0]], notices)
            if logged:
                await self._rows(conn, "log_aborts", logged)
            for task_id, record in records.items():
                outcomes.setdefault(task_id, AbortOutcome(True, record))
            for task_id in ids:
                if task_id in outcomes:
                    continue
                current = None
                if len(attempts) > 1:  # ours, committed on a connection that died: recorded
                    found = await self._row(conn, "get_task", task_id)
                    current = None if found is None else self._record(found)
                recorded = current is not None and current.reason == reason
                outcomes[task_id] = AbortOutcome(recorded, current)
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

    async def claim(
        self,
        *,
        owner: str,
        queues: Collection[str],
        limit: int,
        names: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        # Not retried: a lost reply could hide a claim; the worker claims again later.
        wanted = None if names is None else list(names)
        rows = await self._one("claim", owner, list(queues), limit, wanted, write=True)
        return sorted((self._record(row) for row in rows), key=lambda r: r.created_at)

    async def has_pending(
        self, queues: Collection[str], names: Collection[str] | None = None
    ) -> bool:
        rows = await self._one("has_pending", list(queues), None if names is None else list(names))
        return bool(rows[0][0])

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        rows = await self._one(
            "requeue", task_id, owner, write=True, retry=True, changed=lambda _: (task_id,)
        )
        return self._record(rows[0]) if rows else await self.get(task_id)

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self._one("get_task", task_id)
        return self._record(rows[0]) if rows else None

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
        wanted = [TaskState(s).value for s in states] if states else None
        rows = await self._one(
            "list_tasks",
            wanted,
            name,
            limit,
            offset,
            json.dumps(dict(labels)) if labels else None,
            id_prefix or None,
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
            retry=True,  # a read, safe to repeat: a lost connection costs a retry, not the call
        )
        return [row[0] for row in rows]

    async def count_tasks(self) -> dict[TaskState, int]:
        return {TaskState(state): int(n) for state, n in await self._one("count_tasks")}

    async def mark_delivered(self, task_id: str, *, owner: str) -> None:
        await self._one("mark_delivered", task_id, owner, write=True, retry=True)

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        rows = await self._one(
            "report", task_id, owner, progress, message, write=True, retry=True
        )  # its waiters wake (a stream shows the progress)
        return bool(rows)

    # -- liveness ----------------------------------------------------------------------------

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        beat = (owner.id, owner.host, owner.pid)
        if lease is None:
            await self._one("heartbeat", *beat, write=True, retry=True, changed=_none)
            return None
        if "beat_and_lease" in self.queries:  # the dialect can do it in one statement
            rows = await self._one(
                "beat_and_lease", *beat, lease, quiet, write=True, retry=True, changed=_none
            )
            return _quiet_owners(row for row in rows if row[0] is not None) if rows else None

        async def body(conn: Connection) -> dict[str, QuietOwner] | None:
            await self._rows(conn, "heartbeat", *beat)
            if not await self._rows(conn, "take_lease", owner.id, lease):
                return None
            return _quiet_owners(await self._rows(conn, "quiet_owners", quiet))

        return await self._write(body, retry=True, changed=_none)

    async def owner_beats(self) -> dict[str, int]:
        return {owner: int(beats) for owner, beats in await self._one("owner_beats")}

    async def reap(self, dead: Collection[str]) -> list[str]:
        gone = list(dead)

        async def body(conn: Connection) -> list[str]:
            requeued = await self._rows(conn, "reap_requeue", gone)
            failed = await self._rows(conn, "reap_fail", gone)
            if gone:
                await self._rows(conn, "forget_owners", gone)
                await self._rows(conn, "forget_workers", gone)
            await self._rows(conn, "prune_abort_log", ABORT_LOG_KEEP)
            return [row[0] for row in (*requeued, *failed)]

        ids = await self._transaction(body, retry=True)
        self._changed(ids)
        return ids

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        async def body(conn: Connection) -> list[str]:
            ids = [row[0] for row in await self._rows(conn, "purge", older_than, limit)]
            if ids and "purge_abort_log" in self.queries:  # (PostgreSQL: in the same statement)
                await self._rows(conn, "purge_abort_log", ids)
                await self._rows(conn, "purge_labels", ids)
            return ids

        return await self._write(body, retry=True, changed=lambda ids: ids)

    async def serve(self, owner: str, *, queues: Collection[str], names: Collection[str]) -> None:
        await self._one(
            "serve", owner, list(queues), list(names), write=True, retry=True, changed=_none
        )

    async def unserve(self, owner: str, *, queues: Collection[str]) -> None:
        await self._one("unserve", owner, list(queues), write=True, retry=True, changed=_none)

    async def unclaimed(self, *, queued_for: float, quiet: float) -> list[Unclaimed]:
        found = []
        for queue, name, count, oldest in await self._one("unclaimed", queued_for, quiet):
            when = self._timestamp(oldest)
            assert when is not None  # a group has a first task
            found.append(Unclaimed(queue, name, int(count), when))
        return found

    async def release_owner(self, owner: str) -> list[str]:
        async def body(conn: Connection) -> list[str]:
            rows = await self._rows(conn, "release_owner", owner)
            await self._rows(conn, "forget_owners", [owner])
            await self._rows(conn, "forget_workers", [owner])
            await self._rows(conn, "release_lease", owner)
            return [row[0] for row in rows]

        return await self._write(body, retry=True, changed=lambda ids: ids)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(statements=self._statements)


def _none(rows: object) -> tuple[()]:
    """For writes that change no task's state: nothing to announce."""
    return ()


def _quiet_owners(rows: Iterable[Sequence[Any]]) -> dict[str, QuietOwner]:
    """Rows of (id, beats, seconds since the last beat) as the reaper's input."""
    return {row[0]: QuietOwner(int(row[1]), max(0.0, float(row[2]))) for row in rows}


def _abort_ids(outcome: AbortOutcome) -> list[str]:
    """The ids an abort changed: its task (if it recorded anything) and the children."""
    if not outcome.recorded or outcome.record is None:
        return []
    return [outcome.record.id, *(child.task_id for child in outcome.children)]


def _decide(record: TaskRecord | None, *, adopt: bool = True) -> StartDecision:
    return decide_start(
        None if record is None else record.state,
        ever_started=record is not None and record.started_at is not None,
        adopt=adopt,
    )
