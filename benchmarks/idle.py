"""The watcher's cost with many open scopes: statements per second, CPU, memory per scope.

Scopes are opened in one process and left idle (their bodies wait on an event). Over a window
of several seconds we read the store's own statement counters (every statement aioabort runs,
watcher and heartbeat included) and the process's CPU time. Memory per scope is measured with
tracemalloc as the difference between N idle tasks inside ``abortable()`` and N idle tasks
without it, divided by N: aioabort's own cost, not the task's.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid
from typing import Any

import aioabort


async def _open_scopes(app: aioabort.App, count: int, release: asyncio.Event) -> list[Any]:
    prefix = uuid.uuid4().hex[:8]
    entered = [asyncio.Event() for _ in range(count)]

    async def body(i: int) -> None:
        async with aioabort.abortable(f"idle-{prefix}-{i}", app=app):
            entered[i].set()
            await release.wait()

    tasks = []
    for start in range(0, count, 500):  # enter in batches: a pool has a bounded size
        batch = [asyncio.create_task(body(i)) for i in range(start, min(count, start + 500))]
        tasks += batch
        for ev in entered[start : start + len(batch)]:
            await ev.wait()
    return tasks


async def idle_cost(url: str, count: int, window: float) -> dict[str, Any]:
    async with aioabort.App(url) as app:
        release = asyncio.Event()
        tasks = await _open_scopes(app, count, release)
        await asyncio.sleep(0.5)  # let the entries' own commits settle
        store_before = app.store.statistics()
        cpu_before, wall_before = time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        cpu_after, wall_after = time.process_time(), time.monotonic()
        store_after = app.store.statistics()
        release.set()
        await asyncio.gather(*tasks)
    wall = wall_after - wall_before
    watch = store_after.watch_statements - store_before.watch_statements
    total = watch + store_after.statements - store_before.statements
    return {
        "open_scopes": count,
        "window_s": round(wall, 2),
        "watcher_statements_per_s": round(watch / wall, 2),
        "all_statements_per_s": round(total / wall, 2),
        "cpu_percent_of_one_core": round(100 * (cpu_after - cpu_before) / wall, 2),
    }


async def memory_per_scope(url: str, count: int) -> dict[str, Any]:
    async with aioabort.App(url) as app:

        async def measure(with_scope: bool) -> int:
            release = asyncio.Event()
            ready = [asyncio.Event() for _ in range(count)]
            prefix = uuid.uuid4().hex[:8]

            async def plain(i: int) -> None:
                ready[i].set()
                await release.wait()

            async def scoped(i: int) -> None:
                async with aioabort.abortable(f"mem-{prefix}-{i}", app=app):
                    ready[i].set()
                    await release.wait()

            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            body = scoped if with_scope else plain
            tasks = []
            for start in range(0, count, 500):
                batch = [
                    asyncio.create_task(body(i)) for i in range(start, min(count, start + 500))
                ]
                tasks += batch
                for ev in ready[start : start + len(batch)]:
                    await ev.wait()
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            size = sum(s.size_diff for s in after.compare_to(before, "filename"))
            release.set()
            await asyncio.gather(*tasks)
            return size

        plain_bytes = await measure(False)
        scoped_bytes = await measure(True)
    per_scope = (scoped_bytes - plain_bytes) / count
    return {
        "open_scopes": count,
        "bytes_per_task_without_scope": round(plain_bytes / count),
        "bytes_per_scope": round(per_scope),
    }
