"""Where a no-op task's time goes on SQLite: CPU µs per task by part, each part run alone.

- **submit**: ``noop.delay()``, 100 at a time (the producer's side, its driver thread included);
- **claim**: the worker's ``claim`` of 50 at a time (one statement and one commit per batch);
- **run**: the worker's run of a claimed task — the scope's entry (start), the function
  (body), the end write (group commit) — half of the tasks timed, the other half profiled
  to split the event loop thread's share; the SQLite driver thread's statements apart;
- **notify**: what another process's change detection costs it per task (a worker of a
  queue that gets no work, while the tasks above are queued, claimed and ended).

All CPU time (``time.process_time``, every thread of the process). ``python -m
benchmarks.breakdown [COUNT]`` prints the table; ``benchmarks/README.md`` shows one run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import aioabort
from aioabort._runner import execute, make_scope

from ._procs import start_worker

#: Functions whose cumulative profile time splits the run phase into its parts.
_RUN_PARTS = {
    "start (the scope's entry)": ("_scope.py", "__aenter__"),
    "end write (the scope's exit)": ("_scope.py", "__aexit__"),
}


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _submit(noop: Any, count: int) -> float:
    cpu = time.process_time()
    for start in range(0, count, 100):
        await asyncio.gather(*(noop.delay() for _ in range(min(100, count - start))))
    return time.process_time() - cpu


async def _claim(app: aioabort.App, count: int) -> tuple[float, list[aioabort.TaskRecord]]:
    runtime = app.runtime
    claimed: list[aioabort.TaskRecord] = []
    cpu = time.process_time()
    while len(claimed) < count:
        claimed += await runtime.store.claim(owner=runtime.owner, queues=["default"], limit=50)
    return time.process_time() - cpu, claimed


async def _run(app: aioabort.App, task: Any, records: list[aioabort.TaskRecord]) -> float:
    for start in range(0, len(records), 50):
        batch = records[start : start + 50]
        await asyncio.gather(
            *(execute(make_scope(app, task, r, claimed=True), task, r) for r in batch)
        )
    return 0.0


async def _run_measured(
    app: aioabort.App, task: Any, records: list[aioabort.TaskRecord]
) -> dict[str, float]:
    """CPU seconds of the run phase by part: the first half of ``records`` runs unprofiled
    (the event loop's thread and the whole process timed), the second half under a profile
    of the loop's thread that splits its share."""
    half = len(records) // 2
    process, thread = time.process_time(), time.thread_time()
    await _run(app, task, records[:half])
    process, thread = time.process_time() - process, time.thread_time() - thread
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    await _run(app, task, records[half:])
    profile.disable()
    stats: dict[Any, Any] = cast(Any, pstats.Stats(profile)).stats
    total = sum(v[2] for v in stats.values()) or 1.0
    parts = {}
    for part, (file, function) in _RUN_PARTS.items():
        cumulative = sum(
            v[3] for (f, _, name), v in stats.items() if f.endswith(file) and name == function
        )
        parts[part] = cumulative / total * thread
    parts["body, and the event loop around it"] = thread - sum(parts.values())
    parts["the SQLite driver's thread (statements)"] = process - thread
    return {part: value / half for part, value in parts.items()}


async def measure(count: int) -> dict[str, float]:
    """CPU µs per task by part, for ``count`` no-op tasks."""
    directory = tempfile.mkdtemp(prefix="aioabort-breakdown-")
    url = f"sqlite:///{directory}/store.db"
    os.environ["AIOABORT_URL"] = url
    from . import tasks_app

    async with tasks_app.app as app:
        # A watcher in another process: a worker of a queue nobody sends work to.
        watcher = await start_worker(url, "benchmarks.tasks_app:app", 1, queue="idle")
        watcher_cpu = _cpu_of(watcher.pid)
        try:
            submit = await _submit(tasks_app.noop, count)
            claim, records = await _claim(app, count)
            task = app.registry["noop"]
            parts = await _run_measured(app, task, records)
            watched = _cpu_of(watcher.pid) - watcher_cpu
        finally:
            watcher.terminate()
            await watcher.wait()
    micro = 1e6 / count
    row = {"submit (producer)": submit * micro, "claim": claim * micro}
    row.update({part: value * 1e6 for part, value in parts.items()})
    row["notify (another process's watcher)"] = watched * micro
    row["total"] = sum(row.values())
    return {key: round(value, 1) for key, value in row.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.breakdown",
        description="CPU µs per no-op task on SQLite, by part (submit, claim, run, notify).",
    )
    parser.add_argument("count", nargs="?", type=int, default=3000, help="tasks (3000)")
    count = parser.parse_args().count
    for part, micros in asyncio.run(measure(count)).items():
        print(f"{part:40s} {micros:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
