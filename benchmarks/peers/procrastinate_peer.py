"""procrastinate (PostgreSQL, LISTEN/NOTIFY): an async job awaiting in 10 ms steps, aborted
with ``cancel_job_by_id_async(abort=True)``; the DSN comes from PROCRASTINATE_BENCH_DSN."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get(
            "PROCRASTINATE_BENCH_DSN", "postgresql://postgres@127.0.0.1/postgres"
        )
    )
)


@app.task(name="steps", pass_context=True)
async def steps(context: Any, n: int) -> None:
    try:
        for _ in range(n):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        print(f"CANCELLED {context.job.id} {time.perf_counter()!r}", flush=True)
        raise


@app.task(name="noop")
async def noop() -> None:
    return None
