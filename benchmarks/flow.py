"""The Celery flow, aioabort side: ``delay()`` here, ``aioabort worker`` in another process,
``abort()`` here; latency from the call of ``abort()`` until the task's ``CancelledError``
(printed by the task, CLOCK_MONOTONIC), and the aborted task's final state. Also the cost of
one ``scope.is_aborted()`` check."""

from __future__ import annotations

import asyncio
import os
import time
import timeit
from typing import Any

import aioabort
from aioabort import TaskState

from ._procs import start_worker
from ._stats import summary_ms


async def abort_latency(url: str, count: int) -> dict[str, Any]:
    os.environ["AIOABORT_URL"] = url
    from . import tasks_app

    latencies: list[float] = []
    final_states: dict[str, int] = {}
    async with tasks_app.app:
        proc = await start_worker(url, "benchmarks.tasks_app:app", 4, capture_stdout=True)
        assert proc.stdout is not None
        try:
            for i in range(count):
                handle = await tasks_app.steps.delay(100_000)
                deadline = time.monotonic() + 30
                while await handle.state() is not TaskState.STARTED:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the worker did not start the task")
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.003 + (i % 7) * 0.001)
                start = time.perf_counter()
                await handle.abort("benchmark")
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
                assert line[:2] == ["CANCELLED", handle.id], line
                latencies.append(float(line[2]) - start)
                record = await handle.wait(timeout=30)
                final_states[record.state.value] = final_states.get(record.state.value, 0) + 1
        finally:
            proc.terminate()
            await proc.wait()
    return {"abort_to_cancel": summary_ms(latencies), "final_state_of_aborted_task": final_states}


async def check_cost(url: str) -> dict[str, Any]:
    """Median cost of one ``scope.is_aborted()`` (a local read), in microseconds."""
    async with aioabort.App(url), aioabort.abortable("check-cost") as scope:
        runs = [timeit.timeit(scope.is_aborted, number=100_000) / 100_000 for _ in range(7)]
    runs.sort()
    return {"is_aborted_check_us": round(runs[len(runs) // 2] * 1e6, 3)}
