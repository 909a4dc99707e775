"""The bounded soak of tests/test_soak.py: several worker processes and a producer on one
store, thousands of tasks, abort storms, random ``kill -9`` of workers, scopes cancelled while
they enter, and store faults; then a count of everything that went wrong:

* stuck: a record not terminal once everything settled (workers alive, reaper run);
* left running by a live owner: a stuck record whose owner is still alive (no reaper will
  ever end it: the worst kind);
* lost aborts: an abort this producer recorded whose task's body then ran on and returned
  more than a second after the abort was committed, while its worker was alive (a delivery
  failure). The body's own clock says when it returned (tests/soak_app.py): the record's
  ``finished_at`` is when the end was *written*, which a store fault can hold back for as
  long as the fault lasts;
* changed: a terminal record seen during the run that later differs;
* workers that exited by themselves.

(``python -m benchmarks.soak`` runs the same soak from the command line.)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioabort
from aioabort import AioabortError, TaskRecord, TaskState

from ._processes import Process, cli, environment, spawn

#: A fault the soak inflicts on the store now and then (it may block the event loop).
Fault = Callable[[], Awaitable[None]]

#: A lost abort: the body returned more than this many seconds after the abort committed.
LATE = 1.0


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


async def soak(
    url: str, seconds: float, workers: int, seed: int, fault: Fault | None = None
) -> dict[str, Any]:
    """Run the soak on ``url`` for ``seconds`` with ``workers`` worker processes; what
    happened, and what went wrong (see the module's docstring)."""
    saved = os.environ.get("AIOABORT_URL")
    os.environ["AIOABORT_URL"] = url  # for soak_app's App, opened here
    try:
        from . import soak_app

        run = _Soak(url, seconds, random.Random(seed), f"storm {seed}", fault)
        run.workers = [await run.start_worker() for _ in range(workers)]
        async with soak_app.app as app:
            try:
                await run.produce(app)
                records, live_owners = await run.settle(app)
            finally:
                await run.stop_workers()
    finally:
        if saved is None:
            del os.environ["AIOABORT_URL"]
        else:
            os.environ["AIOABORT_URL"] = saved
    return run.verdict(records, live_owners) | {"seconds": seconds, "workers": workers}


@dataclass
class _Soak:
    url: str
    seconds: float
    rng: random.Random
    reason: str
    fault: Fault | None
    workers: list[Process] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    #: task id -> the time its abort() returned True (the abort was committed by then)
    aborts: dict[str, float] = field(default_factory=dict)
    snapshots: dict[str, tuple[str, Any]] = field(default_factory=dict)
    kills: int = 0
    faults: int = 0
    refused: int = 0
    #: the stderr of each worker that ended without being killed
    exited: list[str] = field(default_factory=list)

    async def start_worker(self) -> Process:
        command = cli("worker", "tests.soak_app:app", "--concurrency", "30")
        command += ["--log-level", "error", "--grace", "1"]
        return await spawn(command, env=environment(self.url), name="soak worker")

    async def produce(self, app: aioabort.App) -> None:
        from . import soak_app

        rng = self.rng
        deadline = time.monotonic() + self.seconds
        next_kill = next_fault = time.monotonic() + self.seconds / 4
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
                        self.refused += 1  # a create refused during a fault: never queued
                    elif isinstance(made, BaseException):
                        raise made
                    else:
                        self.submitted.append(made.id)
                if rng.random() < 0.3 and self.submitted:  # an abort storm over recent tasks
                    await self.storm(app)
                if rng.random() < 0.2:
                    self.entered += await _entry_storm(app, rng, f"entry-{len(self.entered)}")
                for record in await app.tasks(states=["SUCCESS", "FAILURE", "ABORTED"], limit=50):
                    self.snapshots.setdefault(record.id, (record.state.value, record.finished_at))
            except AioabortError:
                self.refused += 1  # a read refused during a fault (reads fail fast)
            await self.replace_exited()
            if time.monotonic() > next_kill:
                await self.kill_one()
                next_kill = time.monotonic() + self.seconds / 4
            if self.fault is not None and time.monotonic() > next_fault:
                await self.fault()
                self.faults += 1
                next_fault = time.monotonic() + self.seconds / 4
            await asyncio.sleep(rng.uniform(0.05, 0.25))

    async def storm(self, app: aioabort.App) -> None:
        recent = self.submitted[-300:]
        targets = self.rng.sample(recent, min(len(recent), self.rng.randint(10, 80)))

        async def abort(task_id: str) -> tuple[bool, float]:
            recorded = await app.handle(task_id).abort(self.reason)
            return recorded, time.time()

        results = await asyncio.gather(*map(abort, targets), return_exceptions=True)
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, AioabortError):
                self.refused += 1
            elif isinstance(result, BaseException):
                raise result
            elif result[0]:
                self.aborts[target] = result[1]

    async def replace_exited(self) -> None:
        for i, worker in enumerate(self.workers):
            if worker.returncode is not None:  # a worker that died by itself: a bug
                await worker.kill()  # (reaped, its stderr read to the end)
                self.exited.append(f"exit {worker.returncode}: {worker.stderr}")
                self.workers[i] = await self.start_worker()

    async def kill_one(self) -> None:
        victim = self.rng.randrange(len(self.workers))
        await self.workers[victim].kill()
        self.workers[victim] = await self.start_worker()
        self.kills += 1

    async def settle(self, app: aioabort.App) -> tuple[dict[str, TaskRecord], set[str]]:
        """Workers drain the queue and the reaper ends what the killed workers held; then
        every record, and the owners still alive."""
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
        return records, set(await app.store.owner_beats())

    async def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                await worker.exit_code(30)
            except AssertionError:
                await worker.kill()

    def verdict(self, records: dict[str, TaskRecord], live_owners: set[str]) -> dict[str, Any]:
        stuck = [i for i in self.submitted if not records[i].state.is_terminal]
        stuck += [i for i in self.entered if i in records and not records[i].state.is_terminal]
        left_running = [i for i in stuck if records[i].owner in live_owners]
        lost = []
        delivered = 0
        latest = 0.0  # how long after its abort committed a body still returned, at most
        for task_id, committed in self.aborts.items():
            record = records[task_id]
            if record.state is TaskState.ABORTED:
                delivered += 1
            elif record.state is TaskState.SUCCESS and record.reason is not None:
                returned = record.result  # when the body returned (soak_app's tasks)
                assert isinstance(returned, float), record
                latest = max(latest, returned - committed)
                if returned - committed > LATE:
                    lost.append(task_id)
        changed = [
            i
            for i, (state, finished) in self.snapshots.items()
            if (records[i].state.value, records[i].finished_at) != (state, finished)
        ]
        states: dict[str, int] = {}
        for record in records.values():
            states[record.state.value] = states.get(record.state.value, 0) + 1
        return {
            "store": self.url.split(":", 1)[0],
            "tasks_submitted": len(self.submitted),
            "final_states": states,
            "retryable_requeued_runs": len([r for r in records.values() if r.attempts > 1]),
            "workers_killed": self.kills,
            "workers_that_exited_by_themselves": len(self.exited),
            "exited_workers_said": self.exited,
            "faults": self.faults,
            "calls_refused_during_faults": self.refused,
            "scopes_cancelled_while_entering": len(self.entered),
            "entries_recorded": len([i for i in self.entered if i in records]),
            "aborts_recorded": len(self.aborts),
            "aborts_delivered": delivered,
            "aborts_raced_completion_or_owner_death": len(self.aborts) - delivered - len(lost),
            "aborts_lost": len(lost),
            "latest_return_after_an_abort": round(latest, 3),
            "lost_aborts": [records[i] for i in lost],
            "records_stuck": len(stuck),
            "records_left_running_by_a_live_owner": len(left_running),
            "terminal_records_changed": len(changed),
            "ok": not (lost or stuck or changed or self.exited),
        }


async def _entry_storm(app: aioabort.App, rng: random.Random, prefix: str) -> list[str]:
    """Scopes cancelled while they enter: a TaskGroup whose sibling fails at once, and tasks
    cancelled a few loop turns after they began entering. Returns the ids tried."""

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
