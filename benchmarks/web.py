"""Abort latency through the web router: two uvicorn processes on one store; a request waits on
instance A; ``POST /aioabort/tasks/{id}/abort`` goes to instance B; the clock runs from sending
that POST until A's handler gets its ``CancelledError`` (printed, CLOCK_MONOTONIC)."""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack
from typing import Any

from ._stats import summary_ms
from .servers import uvicorn


def _server(url: str, *, stdout: bool = False) -> Any:
    return uvicorn(
        "benchmarks.web_app:api",
        url,
        ready="/aioabort/tasks?limit=1",
        ready_status=200,
        stdout=stdout,
    )


async def router_latency(url: str, count: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    async with AsyncExitStack() as stack:
        # A prints when a handler is cancelled.
        server_a = await stack.enter_async_context(_server(url, stdout=True))
        server_b = await stack.enter_async_context(_server(url))
        a, b, proc_a = server_a.base, server_b.base, server_a.proc
        assert proc_a.stdout is not None
        on_a = await stack.enter_async_context(httpx.AsyncClient(base_url=a, timeout=30))
        on_b = await stack.enter_async_context(httpx.AsyncClient(base_url=b, timeout=30))
        for i in range(count):
            request_id = f"web-{os.getpid()}-{i}"
            waiting = asyncio.create_task(on_a.get("/wait", headers={"x-request-id": request_id}))
            while True:
                answer = await on_b.get(f"/aioabort/tasks/{request_id}")
                if answer.status_code == 200 and answer.json()["state"] == "STARTED":
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.003 + (i % 7) * 0.001)
            start = time.perf_counter()
            aborted = await on_b.post(f"/aioabort/tasks/{request_id}/abort", json={})
            assert aborted.status_code == 202, aborted.text
            line = (await asyncio.wait_for(proc_a.stdout.readline(), 30)).decode().split()
            assert line[:2] == ["CANCELLED", request_id], line
            latencies.append(float(line[2]) - start)
            response = await waiting
            assert response.status_code == 499
    return {"abort_to_cancel": summary_ms(latencies)}
