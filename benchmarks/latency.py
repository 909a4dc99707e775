"""Abort latency: from the call of ``abort()`` to the body's ``CancelledError`` (a ``finally``
inside the body), and until the producer's ``handle.wait()`` returns the final state.

The body awaits in 10 ms steps, as in DESIGN.md §5. Same process: producer and consumer share
one App. Another process: the consumer is a real subprocess with its own App on the same store.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aioabort

from ._stats import summary_ms, work_forever

_REPO = str(Path(__file__).resolve().parent.parent)


async def same_process(url: str, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    seen_final: list[float] = []
    prefix = uuid.uuid4().hex[:8]
    async with aioabort.App(url) as app:
        for i in range(count):
            task_id = f"same-{prefix}-{i}"
            entered = asyncio.Event()
            cancelled_at: list[float] = []

            async def body(
                task_id: str = task_id,
                entered: asyncio.Event = entered,
                cancelled_at: list[float] = cancelled_at,
            ) -> None:
                async with aioabort.abortable(task_id, suppress=True):
                    entered.set()
                    try:
                        await work_forever()
                    finally:
                        cancelled_at.append(time.perf_counter())

            task = asyncio.create_task(body())
            await entered.wait()
            await asyncio.sleep(0.003 + (i % 7) * 0.001)  # land at varied points of a step
            handle = app.handle(task_id)
            start = time.perf_counter()
            await handle.abort("benchmark")
            await handle.wait(timeout=10)
            seen_final.append(time.perf_counter() - start)
            await task
            latencies.append(cancelled_at[0] - start)
    return {
        "abort_to_cancel": summary_ms(latencies),
        "abort_to_final_state": summary_ms(seen_final),
    }


async def other_process(url: str, count: int) -> dict[str, Any]:
    prefix = f"cross-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": _REPO}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._consumer",
        url,
        prefix,
        str(count),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    latencies: list[float] = []
    seen_final: list[float] = []
    try:
        async with aioabort.App(url) as app:
            for i in range(count):
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
                assert line == ["READY", str(i)], line
                await asyncio.sleep(0.003 + (i % 7) * 0.001)
                handle = app.handle(f"{prefix}-{i}")
                start = time.perf_counter()
                await handle.abort("benchmark")
                await handle.wait(timeout=10)
                seen_final.append(time.perf_counter() - start)
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
                assert line[:2] == ["CANCELLED", str(i)], line
                latencies.append(float(line[2]) - start)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return {
        "abort_to_cancel": summary_ms(latencies),
        "abort_to_final_state": summary_ms(seen_final),
    }
