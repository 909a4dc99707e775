"""Tasks for the soak run (URL from AIOABORT_URL): work that awaits in small steps. Each
returns the time its body returned, so the soak can tell a body that ran on after its abort
from an end that was only written late."""

from __future__ import annotations

import asyncio
import time

import aioabort

app = aioabort.App(heartbeat_interval=0.3, stale_after=2.0, shutdown_grace=2.0)


@app.task(name="soak.work")
async def work(steps: int) -> float:
    scope = aioabort.current_scope()
    for i in range(steps):
        await asyncio.sleep(0.01)
        if i % 10 == 9:
            await scope.report((i + 1) / steps)
    return time.time()


@app.task(name="soak.retryable", retryable=True)
async def retryable(steps: int) -> float:
    for _ in range(steps):
        await asyncio.sleep(0.01)
    return time.time()
