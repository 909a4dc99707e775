"""Live views for operators: ``tasks --watch``, ``show --follow``, ``abort --wait``.

All three are driven by the watcher's change delivery (``AbortHandle.watch()`` and the change
event), with the watcher's one-second re-read as the safety net, never by a re-read per row:
a change costs one read of the record (or of the listed page), whatever the store holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import anyio

from .._app import App
from .._errors import TaskNotFound
from .._state import TaskRecord
from .._types import utcnow

#: The shortest time between two redraws of a watched listing, in seconds.
REDRAW_INTERVAL = 0.1
#: The safety net: a watched listing is read again after this long without a change (a new
#: task queued elsewhere is not pushed to a process without workers).
REREAD_INTERVAL = 1.0


async def follow(app: App, task_id: str, emit: Callable[[TaskRecord], None]) -> TaskRecord | None:
    """Emit the record, then every change of it, until it is terminal; return the last one
    (``None``: no such task)."""
    last: TaskRecord | None = None
    async with app:
        try:
            watched = app.handle(task_id).watch()
            async with contextlib.aclosing(watched) as records:
                async for record in records:
                    if record != last:
                        emit(record)
                        last = record
        except TaskNotFound:
            return None
    return last


async def wait_all(
    app: App, task_ids: list[str], timeout: float | None
) -> tuple[dict[str, TaskRecord], list[str]]:
    """Wait until every task has a terminal state (at most ``timeout`` seconds); returns the
    records that ended and the ids still running."""
    ended: dict[str, TaskRecord] = {}

    async def one(task_id: str) -> None:
        ended[task_id] = await app.handle(task_id).wait()

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:
            for task_id in task_ids:
                group.start_soon(one, task_id)
    return ended, [t for t in task_ids if t not in ended]


async def watch_listing(
    app: App,
    query: Callable[[], Awaitable[list[TaskRecord]]],
    render: Callable[[list[TaskRecord]], None],
) -> None:
    """Render the listing, then again each time it changes, until cancelled (Ctrl-C).

    One query per change the watcher sees (at most one per :data:`REDRAW_INTERVAL`), and one
    per :data:`REREAD_INTERVAL` without any; ``render`` is called only when the listing differs.
    """
    shown: list[TaskRecord] | None = None
    async with app:
        await app.watcher.want_ends()  # a listing changes when tasks end, too
        while True:
            changed = app.watcher.change_event()  # taken before reading: no change lost
            started = time.monotonic()
            records = await query()
            if records != shown:
                render(records)
                shown = records
            with anyio.move_on_after(REREAD_INTERVAL):
                await changed.wait()
            pause = REDRAW_INTERVAL - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)


def changed_lines(
    before: dict[str, str], records: list[TaskRecord], render: Callable[[TaskRecord], str]
) -> list[str]:
    """The lines of the records whose line is new or differs from the one last printed for
    their id (``before``, updated), oldest first: a change the line does not show (a message,
    progress within the same percent) prints nothing."""
    fresh: list[str] = []
    for record in reversed(records):
        line = render(record)
        if before.get(record.id) != line:
            before[record.id] = line
            fresh.append(line)
    return fresh


def stamp() -> str:
    return utcnow().strftime("%H:%M:%S")
