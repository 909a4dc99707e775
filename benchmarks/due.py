"""Tasks queued for later: what an idle worker costs while they wait, and how soon after its
``not_before`` a due task starts.

1. An ``aioabort worker`` process runs over a store that holds ``queued`` tasks due an hour
   from now; its CPU (from ``/proc``) over a window, beside the same worker over an empty
   store in the same run (the ratio is the cost of the waiting tasks).
2. With those tasks still queued, ``samples`` tasks are queued with ``eta`` spread over the
   next seconds; each one's start (``started_at``) minus its ``not_before`` is its lateness.
   The worker learns of each by a push and sleeps until its due time (the timer), so this is
   the timer's precision plus a claim, not a poll interval.

``python -m benchmarks.due [--queued N] [--samples N] [--window S]`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aioabort

from ._procs import start_worker
from ._stats import summary_ms

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def _worker_cpu(url: str, window: float) -> float:
    """The worker process's CPU over ``window`` seconds, in percent of one core."""
    proc = await start_worker(url, "benchmarks.tasks_app:app", 50)
    try:
        await asyncio.sleep(1.0)  # its start-up is not idling
        before, start = _cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(window)
        used, wall = _cpu_seconds(proc.pid) - before, time.monotonic() - start
    finally:
        proc.terminate()
        await proc.wait()
    return round(100 * used / wall, 3)


def _producer(url: str) -> tuple[aioabort.App, aioabort.Task[[], None]]:
    """An App on ``url`` with the worker's no-op task registered (by the same name)."""
    app = aioabort.App(url)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app, noop


async def run(url: str, *, queued: int, samples: int, window: float) -> dict[str, Any]:
    app, noop = _producer(url)
    async with app:  # the schema exists before the first worker opens it
        pass
    empty_cpu = await _worker_cpu(url, window)
    async with app:
        started = time.perf_counter()
        for start in range(0, queued, 1000):
            batch = min(1000, queued - start)
            await asyncio.gather(*(noop.apply(countdown=3600) for _ in range(batch)))
        queue_seconds = time.perf_counter() - started
    waiting_cpu = await _worker_cpu(url, window)

    async with app:
        proc = await start_worker(url, "benchmarks.tasks_app:app", 50)
        try:
            await asyncio.sleep(1.0)
            first = datetime.now(UTC) + timedelta(seconds=1)
            handles = [
                await noop.apply(eta=first + timedelta(seconds=0.05 * i)) for i in range(samples)
            ]
            lateness = []
            for handle in handles:
                record = await handle.wait(timeout=60)
                assert record.started_at is not None and record.not_before is not None
                lateness.append((record.started_at - record.not_before).total_seconds())
        finally:
            proc.terminate()
            await proc.wait()
        counts = await app.counts()
    return {
        "queued_for_later": queued,
        "queue_seconds": round(queue_seconds, 1),
        "idle_worker_cpu_percent_empty_store": empty_cpu,
        "idle_worker_cpu_percent_with_queued": waiting_cpu,
        "start_after_not_before": summary_ms(lateness),
        "still_queued": counts.get(aioabort.TaskState.PENDING, 0),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aioabort-due-") as tmp:
        if options.store in ("sqlite", "both"):
            url = f"sqlite:///{tmp}/due.db"
            results["sqlite"] = await run(
                url, queued=options.queued, samples=options.samples, window=options.window
            )
        if options.store in ("postgres", "both"):
            schema = f"due_{uuid.uuid4().hex[:8]}"
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            url = f"{base}?aioabort_schema={schema}"
            try:
                results["postgres"] = await run(
                    url, queued=options.queued, samples=options.samples, window=options.window
                )
            finally:
                import asyncpg

                conn = await asyncpg.connect(base)
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await conn.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
