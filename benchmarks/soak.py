"""A bounded soak: several worker processes and a producer on one store, thousands of tasks,
abort storms, random ``kill -9`` of workers, scopes cancelled while they enter, and store
faults; then it checks that nothing was lost.

    python -m benchmarks.soak --store sqlite --seconds 30
    python -m benchmarks.soak --store postgres --seconds 300 --workers 4 --faults

It prints what happened and exits 1 on any loss:

* stuck: a record not terminal once everything settled (workers alive, reaper run);
* left running by a live owner: a stuck record whose owner is still alive (no reaper will
  ever end it: the worst kind);
* lost aborts: an abort this producer recorded whose task's body then ran on and returned
  more than a second after the abort was committed, while its worker was alive (a delivery
  failure). The body's own clock says when it returned (soak_app): the record's
  ``finished_at`` is when the end was written, which a fault can hold back;
* changed: a terminal record seen during the run that later differs.

``--faults`` adds, every quarter of the run, what the store can suffer without a server of
the soak's own: on SQLite another writer holding the write lock for a second and a stall of
the producer's event loop; on PostgreSQL every aioabort connection terminated by the server
(``pg_terminate_backend``, what clients see of a restart) while the producer's loop stalls.
The test suite also runs it with real PostgreSQL restarts on a throwaway cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_REPO = str(Path(__file__).resolve().parent.parent)
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

#: A fault the soak inflicts on the store now and then (it may block the event loop).
Fault = Callable[[], Awaitable[None]]


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


async def _abort(app: Any, task_id: str, reason: str) -> tuple[bool, float]:
    """``abort()``, and the time it returned (the abort was committed by then)."""
    recorded: bool = await app.handle(task_id).abort(reason)
    return recorded, time.time()


async def _entry_storm(app: Any, rng: random.Random, prefix: str) -> list[str]:
    """Scopes cancelled while they enter: a TaskGroup whose sibling fails at once, and tasks
    cancelled a few loop turns after they began entering. Returns the ids tried."""
    import aioabort

    async def scoped(task_id: str) -> None:
        async with aioabort.abortable(task_id, app=app, name="soak.entry"):
            await asyncio.sleep(3600)

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("a sibling failed")

    ids = [f"{prefix}-g{i}" for i in range(rng.randint(20, 60))]
    try:
        async with asyncio.TaskGroup() as group:
            for task_id in ids:
                group.create_task(scoped(task_id))
            group.create_task(failing())
    except* ValueError:
        pass
    except* aioabort.AioabortError:
        pass
    for i in range(rng.randint(5, 20)):
        task_id = f"{prefix}-c{i}"
        ids.append(task_id)
        task = asyncio.create_task(scoped(task_id))
        for _ in range(rng.randint(0, 6)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, aioabort.AioabortError):
            pass
    return ids


async def soak(
    url: str, seconds: float, workers: int, seed: int, fault: Fault | None = None
) -> dict[str, Any]:
    from aioabort import AioabortError, TaskRecord, TaskState

    rng = random.Random(seed)
    os.environ["AIOABORT_URL"] = url
    from . import soak_app

    submitted: list[str] = []
    entered: list[str] = []
    aborts: dict[str, float] = {}  # task id -> when its abort() returned True
    kills = faults = refused = 0
    exited: list[int] = []  # exit codes of workers that ended without being killed
    snapshots: dict[str, tuple[str, Any]] = {}
    procs = [await _worker(url) for _ in range(workers)]
    async with soak_app.app as app:
        try:
            deadline = time.monotonic() + seconds
            next_kill = next_fault = time.monotonic() + seconds / 4
            while time.monotonic() < deadline:
                try:
                    batch = [
                        (soak_app.retryable if rng.random() < 0.1 else soak_app.work).delay(
                            rng.randint(1, 60)
                        )
                        for _ in range(rng.randint(20, 80))
                    ]
                    for made in await asyncio.gather(*batch, return_exceptions=True):
                        if isinstance(made, AioabortError):
                            refused += 1  # a create refused during a fault: never queued
                        elif isinstance(made, BaseException):
                            raise made
                        else:
                            submitted.append(made.id)
                    if rng.random() < 0.3 and submitted:  # an abort storm over recent tasks
                        targets = rng.sample(
                            submitted[-300:], min(len(submitted[-300:]), rng.randint(10, 80))
                        )
                        results = await asyncio.gather(
                            *(_abort(app, t, f"storm {seed}") for t in targets),
                            return_exceptions=True,
                        )
                        for target, result in zip(targets, results, strict=True):
                            if isinstance(result, AioabortError):
                                refused += 1
                            elif isinstance(result, BaseException):
                                raise result
                            elif result[0]:
                                aborts[target] = result[1]
                    if rng.random() < 0.2:
                        entered += await _entry_storm(app, rng, f"entry-{len(entered)}")
                    for record in await app.tasks(
                        states=["SUCCESS", "FAILURE", "ABORTED"], limit=50
                    ):
                        snapshots.setdefault(record.id, (record.state.value, record.finished_at))
                except AioabortError:
                    refused += 1  # a read refused during a fault (reads fail fast)
                for i, proc in enumerate(procs):
                    if proc.returncode is not None:  # a worker that died by itself: a bug
                        exited.append(proc.returncode)
                        procs[i] = await _worker(url)
                if time.monotonic() > next_kill:
                    victim = rng.randrange(len(procs))
                    procs[victim].send_signal(signal.SIGKILL)
                    await procs[victim].wait()
                    procs[victim] = await _worker(url)
                    kills += 1
                    next_kill = time.monotonic() + seconds / 4
                if fault is not None and time.monotonic() > next_fault:
                    await fault()
                    faults += 1
                    next_fault = time.monotonic() + seconds / 4
                await asyncio.sleep(rng.uniform(0.05, 0.25))
            # Settle: workers drain the queue; the reaper ends what the killed workers held.
            settle = time.monotonic() + 120
            while time.monotonic() < settle:
                try:
                    await app.reap()
                    counts = await app.counts()
                except AioabortError:
                    await asyncio.sleep(0.5)
                    continue
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
            live_owners = set(await app.store.owner_beats())
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
    stuck += [i for i in entered if i in records and not records[i].state.is_terminal]
    left_running = [i for i in stuck if records[i].owner in live_owners]
    lost = []
    delivered = 0
    for task_id, committed in aborts.items():
        record = records[task_id]
        if record.state is TaskState.ABORTED:
            delivered += 1
        elif record.state is TaskState.SUCCESS and record.reason is not None:
            returned = record.result  # when the body returned (soak_app's tasks)
            if isinstance(returned, float) and returned - committed > 1:
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
        "workers_that_exited_by_themselves": len(exited),
        "faults": faults,
        "calls_refused_during_faults": refused,
        "scopes_cancelled_while_entering": len(entered),
        "entries_recorded": len([i for i in entered if i in records]),
        "aborts_recorded": len(aborts),
        "aborts_delivered": delivered,
        "aborts_raced_completion_or_owner_death": len(aborts) - delivered - len(lost),
        "aborts_lost": len(lost),
        "records_stuck": len(stuck),
        "records_left_running_by_a_live_owner": len(left_running),
        "terminal_records_changed": len(changed),
        "ok": not (lost or stuck or changed or exited),
    }


def bench_url(store: str, tmp: str, name: str) -> str:
    """A fresh store for one run: a SQLite file in ``tmp``, or a PostgreSQL schema of its own
    (drop it with :func:`drop_schema`)."""
    if store == "sqlite":
        return f"sqlite:///{tmp}/{name}.db"
    base = os.environ.get("AIOABORT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    return f"{base}?aioabort_schema={name}_{uuid.uuid4().hex[:8]}"


async def drop_schema(url: str) -> None:
    import asyncpg

    from aioabort.backends.postgres import parse_url

    dsn, schema = parse_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def sqlite_fault(url: str) -> Fault:
    """Another writer holds the write lock for a second, then the producer's loop stalls."""
    path = url[len("sqlite:///") :]

    async def fault() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(1.0)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        time.sleep(0.5)  # noqa: ASYNC251 - a stalled event loop, on purpose

    return fault


def postgres_fault(url: str) -> Fault:
    """The server ends every aioabort connection of this database (what a restart looks like
    to its clients) while the producer's event loop is stalled."""
    from aioabort.backends.postgres import parse_url

    dsn, _ = parse_url(url)

    async def fault() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            time.sleep(0.5)  # noqa: ASYNC251 - the loop is busy while the goodbyes arrive
        finally:
            await conn.close()

    return fault


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
    parser.add_argument(
        "--faults", action="store_true", help="inflict store faults every quarter of the run"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    with tempfile.TemporaryDirectory(prefix="aioabort-soak-") as tmp:
        url = bench_url(args.store, tmp, "soak")
        try:
            fault = None
            if args.faults:
                fault = (sqlite_fault if args.store == "sqlite" else postgres_fault)(url)
            result = asyncio.run(soak(url, args.seconds, args.workers, seed, fault))
        finally:
            if args.store == "postgres":
                asyncio.run(drop_schema(url))
    print(f"soak (seed {seed}):")
    for key, value in result.items():
        print(f"  {key:40} {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
