"""Tasks for the worker tests; the App's URL comes from AIOABORT_URL (set by ``--db``)."""

from __future__ import annotations

import asyncio

import anyio

import aioabort

app = aioabort.App(heartbeat_interval=0.2, stale_after=2.0, shutdown_grace=5.0)


@app.task
async def add(a: int, b: int) -> int:
    return a + b


@app.task
async def count(n: int, step: float = 0.05) -> list[int]:
    done: list[int] = []
    for i in range(n):
        await asyncio.sleep(step)
        done.append(i)
        await aioabort.current_scope().report((i + 1) / n, f"{i + 1} of {n}")
    return done


@app.task(retryable=True)
async def retryable_count(n: int) -> int:
    for _ in range(n):
        await asyncio.sleep(0.05)
    return n


@app.task
async def stubborn() -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass  # swallows the abort, then returns
    return "finished anyway"


@app.task
async def parent(children: int) -> list[str]:
    handles = [await count.delay(1000) for _ in range(children)]
    await asyncio.sleep(3600)
    return [h.id for h in handles]


@app.task
async def hostage() -> None:
    """Swallows every cancellation: only a worker that gives up on it can exit."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@app.task(retryable=True)
async def retryable_hostage() -> None:
    """The same, declared retryable: given up on, it goes back to the queue."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@app.task(abort_grace=0.2)
async def deaf() -> None:
    """Ignores its abort, without spinning: marked ignored after 0.2 s."""
    with anyio.CancelScope(shield=True):
        await asyncio.sleep(3600)
