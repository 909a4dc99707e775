"""Starting the worker processes the benchmarks measure against."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)


async def start_worker(
    url: str,
    target: str,
    concurrency: int,
    *,
    capture_stdout: bool = False,
    log_level: str = "warning",
    queue: str = "default",
) -> asyncio.subprocess.Process:
    """``aioabort worker TARGET`` on ``url``; returns once it prints its banner (claiming)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioabort",
        "worker",
        target,
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        "--queue",
        queue,
        stdout=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO, "AIOABORT_URL": url},
    )
    assert proc.stderr is not None
    banner = await asyncio.wait_for(proc.stderr.readline(), 30)
    if b"aioabort worker:" not in banner:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the worker did not start: {banner.decode(errors='replace')}")
    return proc
