"""What idle waiters cost while other tasks finish (DESIGN rule 13).

``W`` idle ``handle.wait()`` calls (on records no worker will run) wait in the producer while
it queues ``count`` no-op tasks for one worker process and waits for each of them to end. The
figure is the producer's CPU time (``time.process_time()``) and store statements per finished
task, for W = 0, 100, 1,000, side by side in one run: cost should follow the work, not the
number of waiters.

    python -m benchmarks.waiters --store sqlite --tasks 1500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from typing import Any

from ._procs import start_worker
from .soak import drop_schema

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run(url: str, count: int, idle: int) -> dict[str, Any]:
    os.environ["AIOABORT_URL"] = url
    from . import tasks_app

    async with tasks_app.app as app:
        idle_ids = [f"idle-{uuid.uuid4().hex[:8]}-{i}" for i in range(idle)]
        await asyncio.gather(*(app.create(i, name="never runs") for i in idle_ids))
        idle_waits = [asyncio.create_task(app.handle(i).wait()) for i in idle_ids]
        proc = await start_worker(url, "benchmarks.tasks_app:app", 50)
        try:
            await asyncio.sleep(0.2)  # the idle waiters are all waiting
            statements = app.store.statistics().statements
            cpu, wall = time.process_time(), time.perf_counter()
            handles = []
            for start in range(0, count, 100):
                batch = min(100, count - start)
                handles += await asyncio.gather(*(tasks_app.noop.delay() for _ in range(batch)))
            await asyncio.gather(*(h.wait(timeout=120) for h in handles))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            statements = app.store.statistics().statements - statements
        finally:
            proc.terminate()
            await proc.wait()
            for wait in idle_waits:
                wait.cancel()
            await asyncio.gather(*idle_waits, return_exceptions=True)
    return {
        "idle_waiters": idle,
        "tasks": count,
        "producer_cpu_s": round(cpu, 3),
        "cpu_ms_per_task": round(1000 * cpu / count, 3),
        "statements_per_task": round(statements / count, 2),
        "seconds": round(wall, 2),
    }


async def compare(url_for: Any, count: int, idles: list[int]) -> list[dict[str, Any]]:
    rows = []
    for idle in idles:
        url = url_for()
        try:
            rows.append(await run(url, count, idle))
        finally:
            if url.startswith("postgres"):
                await drop_schema(url)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.waiters", description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--idle", type=int, nargs="*", default=[0, 100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aioabort-waiters-") as tmp:

        def url_for() -> str:
            if args.store == "sqlite":
                return f"sqlite:///{tmp}/w-{uuid.uuid4().hex[:8]}.db"
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            return f"{base}?aioabort_schema=w_{uuid.uuid4().hex[:8]}"

        rows = asyncio.run(compare(url_for, args.tasks, args.idle))
    base = rows[0]["cpu_ms_per_task"] or 1e-9
    print("| idle waiters | producer CPU s | CPU ms/task | statements/task | ratio to W=0 |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['idle_waiters']} | {row['producer_cpu_s']} | {row['cpu_ms_per_task']} | "
            f"{row['statements_per_task']} | {row['cpu_ms_per_task'] / base:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
