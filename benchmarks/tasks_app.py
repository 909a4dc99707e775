"""Tasks for the throughput and Celery-flow benchmarks (URL from AIOABORT_URL)."""

from __future__ import annotations

import asyncio
import time

import aioabort

app = aioabort.App()


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="steps")
async def steps(n: int) -> float:
    """Awaits in 10 ms steps; returns when it was cancelled (CLOCK_MONOTONIC) or -1."""
    try:
        for _ in range(n):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        aioabort.current_scope()  # still inside the scope
        print(f"CANCELLED {aioabort.current_scope().id} {time.perf_counter()!r}", flush=True)
        raise
    return -1.0
