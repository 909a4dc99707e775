"""Group commit for the SQL stores: writes that arrive while a batch is written go in the next;
and the items of the two batched writes (a new task, a task's end)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from .._state import TaskState

I = TypeVar("I")
O = TypeVar("O")


class GroupCommit(Generic[I, O]):
    """Group commit: writes that arrive while a batch is being written go in the next batch.

    Each caller awaits its own result; with one caller at a time a batch has one item and
    costs what a single write would. Under load, one transaction carries many writes, which
    is what lets one worker end a thousand tasks a second.
    """

    def __init__(
        self, write: Callable[[list[I]], Awaitable[list[O | BaseException]]], max_batch: int = 500
    ) -> None:
        self._write = write
        self._max = max_batch
        self._pending: list[tuple[I, asyncio.Future[O]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, item: I) -> O:
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    results = await self._write([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None


@dataclass(frozen=True, slots=True)
class Finish:
    """One end-state write (see :meth:`Store.finish`)."""

    task_id: str
    owner: str
    state: TaskState
    result_json: str | None
    error_json: str | None


@dataclass(frozen=True, slots=True)
class NewTask:
    """One PENDING record to create (see :meth:`Store.create`), with no parent."""

    task_id: str
    name: str | None
    queue: str | None
    args_json: str | None
    retryable: bool
    labels: Mapping[str, str] | None = None
    not_before: datetime | None = None
    expires_at: datetime | None = None
    time_limit: float | None = None
    key: str | None = None
