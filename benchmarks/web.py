"""Abort latency through the web router: two uvicorn processes on one store; a request waits on
instance A; ``POST /aioabort/tasks/{id}/abort`` goes to instance B; the clock runs from sending
that POST until A's handler gets its ``CancelledError`` (printed, CLOCK_MONOTONIC)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ._stats import summary_ms

_REPO = str(Path(__file__).resolve().parent.parent)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _server(url: str, stack: AsyncExitStack) -> tuple[str, asyncio.subprocess.Process]:
    import httpx

    port = _port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.web_app:api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "AIOABORT_URL": url, "PYTHONPATH": _REPO},
        cwd=_REPO,
    )

    async def stop() -> None:
        proc.terminate()
        await proc.wait()

    stack.push_async_callback(stop)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(600):
            try:
                if (await client.get("/aioabort/tasks?limit=1")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("uvicorn did not start")
    return base, proc


async def router_latency(url: str, count: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    async with AsyncExitStack() as stack:
        a, proc_a = await _server(url, stack)
        b, _ = await _server(url, stack)
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
            aborted = await on_b.post(f"/aioabort/tasks/{request_id}/abort")
            assert aborted.status_code == 202, aborted.text
            line = (await asyncio.wait_for(proc_a.stdout.readline(), 30)).decode().split()
            assert line[:2] == ["CANCELLED", request_id], line
            latencies.append(float(line[2]) - start)
            response = await waiting
            assert response.status_code == 499
    return {"abort_to_cancel": summary_ms(latencies)}
