"""What a SQL driver provides, and how the SQL store's flows run statements over it.

A driver (:mod:`.sqlite`, :mod:`.postgres`) supplies three things: a write transaction, a
single statement, and how timestamps come back. Every statement is counted here, in
:meth:`SQLBase._rows` and :meth:`SQLBase._one`, for every caller; every local write is
announced here (:meth:`SQLBase._write`), which is the store's duty towards ``handle.wait()``.
The schema is created or brought up to date here, before anything is written.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, ClassVar, LiteralString, Protocol, Self, TypeVar

from .._backend import AbortNotice, Change, ChangeCallback, Store, StoreStatistics
from .._errors import StoreUnavailable
from .._state import TaskRecord
from .._types import AbortReason
from . import _sql, redact
from ._ddl import statements, table_columns

T = TypeVar("T")

#: The schema version both dialects create; a newer one in the database is refused, an older
#: one migrated (columns the tables lack are added, then every statement of the schema runs:
#: they are "IF NOT EXISTS"). 2: an index on updated_at. 3: the reaper lease, and an index
#: on the owners' last beat. 4: ``abort_delivered_at`` (a column). 5: an index on
#: ``finished_at`` (retention). 6: labels (a column, and the ``task_labels`` table their
#: filters go through). 7: the ``workers`` table (what each live
#: worker claims, for :meth:`~aioabort.Store.unclaimed`), and an index on ``created_at`` (a
#: page of the newest records reads 51 rows, not the table). 8: ``not_before``,
#: ``expires_at`` and ``time_limit`` (columns), the index on the due time that claims and a
#: worker's timer read (it replaces the index of queued tasks by ``created_at``), and one on
#: the expiry of queued tasks.
SCHEMA_VERSION = 8

Row = Sequence[Any]


class Connection(Protocol):
    """What a flow needs of a connection inside a transaction: run one statement."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> Sequence[Row]: ...


class SQLBase(Store, abc.ABC):
    """The driver's side of the SQL store, and the statement runner every flow uses."""

    #: The named-query file: ``sql/<dialect>.sql``.
    dialect: ClassVar[str]

    def __init__(self, url: str, *, poll_interval: float | None = None) -> None:
        self.display_url = redact(url)
        if poll_interval is not None:
            self.poll_interval = poll_interval
        #: The dialect's statements by name (:func:`aioabort.backends.sql.load_queries`).
        self.queries: dict[str, LiteralString] = {}
        self._statements = 0
        self._on_change: ChangeCallback | None = None

    @classmethod
    def from_url(cls, url: str, *, poll_interval: float | None = None) -> Self:
        return cls(url, poll_interval=poll_interval)

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

    # -- rows as records ---------------------------------------------------------------------

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

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(statements=self._statements)

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
            for statement in statements(self.queries["schema"]):
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


def nothing_changed(rows: object) -> tuple[()]:
    """For writes that change no task's state: nothing to announce."""
    return ()
