"""The SQL store's flows of the queue, as a worker sees it: when something is next due, the
claim of due tasks, the expiry of queued ones, and a requeue."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from .._backend import Due
from .._state import TaskRecord
from .._types import ErrorInfo
from ._sqlbase import Connection, SQLBase


class QueueFlows(SQLBase):
    """Claim, next_due, expire, requeue and retry, each written once."""

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
        due = await self.next_due(queues, names)  # the same indexed read a worker makes
        return due.claimable is not None and due.claimable <= 0

    async def next_due(self, queues: Collection[str], names: Collection[str] | None) -> Due:
        rows = await self._one("next_due", list(queues), None if names is None else list(names))
        claimable, expiring = rows[0]
        return Due(
            None if claimable is None else float(claimable),
            None if expiring is None else float(expiring),
        )

    async def expire(
        self, task_ids: Collection[str] | None = None, *, by: str, limit: int = 1000
    ) -> list[str]:
        wanted = None if task_ids is None else list(task_ids)

        async def body(conn: Connection) -> list[str]:
            ids = [row[0] for row in await self._rows(conn, "expire_tasks", wanted, by, limit)]
            if ids:  # logged like any abort: watchers and waiters of every process learn it
                await self._rows(conn, "log_aborts", ids)
            return ids

        return await self._write(body, retry=True, changed=lambda ids: ids)

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        rows = await self._one(
            "requeue", task_id, owner, write=True, retry=True, changed=lambda _: (task_id,)
        )
        return self._record(rows[0]) if rows else await self.get(task_id)

    async def retry(
        self, task_id: str, *, owner: str, not_before: datetime, error: ErrorInfo
    ) -> TaskRecord | None:
        rows = await self._one(
            "retry",
            task_id,
            owner,
            not_before,
            error.to_json(),
            write=True,
            retry=True,
            changed=lambda _: (task_id,),
        )
        return self._record(rows[0]) if rows else await self.get(task_id)
