"""Queue throughput: no-op tasks submitted, run by one worker process, and finished, per second.

The producer submits ``count`` tasks (``delay()``, 100 at a time, concurrently) while one
``aioabort worker`` process (concurrency 50) runs them; the clock runs from the first submit
until the store counts every task SUCCESS.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aioabort import TaskState

from ._procs import start_worker


async def run(url: str, count: int) -> dict[str, Any]:
    os.environ["AIOABORT_URL"] = url
    from . import tasks_app

    async with tasks_app.app as app:
        proc = await start_worker(url, "benchmarks.tasks_app:app", 50)
        try:
            start = time.perf_counter()
            submitted = 0
            while submitted < count:
                batch = min(100, count - submitted)
                await asyncio.gather(*(tasks_app.noop.delay() for _ in range(batch)))
                submitted += batch
            submit_done = time.perf_counter()
            while True:
                counts = await app.counts()
                if counts[TaskState.SUCCESS] >= count:
                    break
                if counts[TaskState.FAILURE]:
                    raise RuntimeError(f"tasks failed: {counts}")
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            proc.terminate()
            await proc.wait()
    return {
        "tasks": count,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(count / elapsed, 1),
        "submit_per_s": round(count / (submit_done - start), 1),
    }
