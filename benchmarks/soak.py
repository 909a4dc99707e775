"""A bounded soak: several worker processes and a producer on one store, thousands of tasks,
abort storms and random ``kill -9`` of workers; then it checks that nothing was lost.

    python -m benchmarks.soak --store sqlite --seconds 30
    python -m benchmarks.soak --store postgres --seconds 300 --workers 4

It prints what happened and exits 1 on any loss:

* stuck: a record not terminal once everything settled (workers alive, reaper run);
* lost aborts: an abort this producer recorded whose task then ran on and ended SUCCESS more
  than a second after the request while its worker was alive (a delivery failure);
* changed: a terminal record seen during the run that later differs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

_REPO = str(Path(__file__).resolve().parent.parent)
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _worker(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioabort",
        "worker",
        "benchmarks.soak_app:app",
        "--concurrency",
        "30",
        "--log-level",
        "error",
        "--grace",
        "1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": _REPO, "AIOABORT_URL": url},
    )


async def soak(url: str, seconds: float, workers: int, seed: int) -> dict[str, Any]:
    from aioabort import TaskRecord, TaskState

    rng = random.Random(seed)
    os.environ["AIOABORT_URL"] = url
    from . import soak_app

    submitted: list[str] = []
    aborts: dict[str, float] = {}
    kills = 0
    snapshots: dict[str, tuple[str, Any]] = {}
    procs = [await _worker(url) for _ in range(workers)]
    async with soak_app.app as app:
        try:
            deadline = time.monotonic() + seconds
            next_kill = time.monotonic() + seconds / 4
            while time.monotonic() < deadline:
                batch = [
                    (soak_app.retryable if rng.random() < 0.1 else soak_app.work).delay(
                        rng.randint(1, 60)
                    )
                    for _ in range(rng.randint(20, 80))
                ]
                submitted += [h.id for h in await asyncio.gather(*batch)]
                if rng.random() < 0.3:  # an abort storm over recent tasks
                    targets = rng.sample(submitted[-300:], min(len(submitted), rng.randint(10, 80)))
                    results = await asyncio.gather(
                        *(app.handle(t).abort(f"storm {seed}") for t in targets)
                    )
                    for target, recorded in zip(targets, results, strict=True):
                        if recorded:
                            aborts[target] = time.time()
                if time.monotonic() > next_kill:
                    victim = rng.randrange(len(procs))
                    procs[victim].send_signal(signal.SIGKILL)
                    await procs[victim].wait()
                    procs[victim] = await _worker(url)
                    kills += 1
                    next_kill = time.monotonic() + seconds / 4
                for record in await app.tasks(states=["SUCCESS", "FAILURE", "ABORTED"], limit=50):
                    snapshots.setdefault(record.id, (record.state.value, record.finished_at))
                await asyncio.sleep(rng.uniform(0.05, 0.25))
            # Settle: workers drain the queue; the reaper ends what the killed workers held.
            settle = time.monotonic() + 120
            while time.monotonic() < settle:
                await app.reap()
                counts = await app.counts()
                if not any(
                    counts[s] for s in (TaskState.PENDING, TaskState.STARTED, TaskState.ABORTING)
                ):
                    break
                await asyncio.sleep(0.5)
            records: dict[str, TaskRecord] = {}
            while True:
                page = await app.tasks(limit=10_000, offset=len(records))
                records.update((r.id, r) for r in page)
                if len(page) < 10_000:
                    break
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    stuck = [i for i in submitted if not records[i].state.is_terminal]
    lost = []
    delivered = 0
    for task_id in aborts:
        record = records[task_id]
        if record.state is TaskState.ABORTED:
            delivered += 1
        elif record.state is TaskState.SUCCESS and record.reason is not None:
            late = record.finished_at - record.reason.at if record.finished_at else timedelta(0)
            if late > timedelta(seconds=1):
                lost.append(task_id)
    changed = [
        i
        for i, (state, finished) in snapshots.items()
        if (records[i].state.value, records[i].finished_at) != (state, finished)
    ]
    states: dict[str, int] = {}
    for record in records.values():
        states[record.state.value] = states.get(record.state.value, 0) + 1
    return {
        "store": url.split(":", 1)[0],
        "seconds": seconds,
        "workers": workers,
        "tasks_submitted": len(submitted),
        "final_states": states,
        "retryable_requeued_runs": len([r for r in records.values() if r.attempts > 1]),
        "workers_killed": kills,
        "aborts_recorded": len(aborts),
        "aborts_delivered": delivered,
        "aborts_raced_completion_or_owner_death": len(aborts) - delivered - len(lost),
        "aborts_lost": len(lost),
        "records_stuck": len(stuck),
        "terminal_records_changed": len(changed),
        "ok": not (lost or stuck or changed),
    }


async def _drop_schema(url: str) -> None:
    import asyncpg

    from aioabort.backends.postgres import parse_url

    dsn, schema = parse_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    with tempfile.TemporaryDirectory(prefix="aioabort-soak-") as tmp:
        if args.store == "sqlite":
            url = f"sqlite:///{tmp}/soak.db"
        else:
            base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
            url = f"{base}?aioabort_schema=soak_{uuid.uuid4().hex[:8]}"
        try:
            result = asyncio.run(soak(url, args.seconds, args.workers, seed))
        finally:
            if args.store == "postgres":
                asyncio.run(_drop_schema(url))
    print(f"soak (seed {seed}):")
    for key, value in result.items():
        print(f"  {key:40} {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
