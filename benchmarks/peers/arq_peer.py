"""arq (Redis): an async job awaiting in 10 ms steps, aborted with ``Job.abort()``; the worker
polls for aborts every ``poll_delay`` (ARQ_BENCH_POLL_DELAY, arq's default 0.5 s)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings


async def steps(ctx: dict[str, Any], n: int) -> None:
    try:
        for _ in range(n):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        print(f"CANCELLED {ctx['job_id']} {time.perf_counter()!r}", flush=True)
        raise


async def noop(ctx: dict[str, Any]) -> None:
    return None


class WorkerSettings:
    functions = [steps, noop]
    allow_abort_jobs = True
    max_jobs = 50
    poll_delay = float(os.environ.get("ARQ_BENCH_POLL_DELAY", "0.5"))
    queue_name = os.environ.get("ARQ_BENCH_QUEUE", "arq:queue")
    redis_settings = RedisSettings(host="127.0.0.1", port=6379)
