"""The abort sweep over the Celery bridge's run of a task (``Bridge._hold``, the coroutine that
enters a task's scope on the process's loop and records its end): an abort landing at any of
its awaits leaves the record saying what the task did, and both hand-overs to the task's
thread settled (a thread left waiting would stall a Celery worker for seconds)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

import aioabort
from aioabort import TaskAborted, TaskState
from aioabort._sweep import sweep
from aioabort.celery._bridge import Bridge, Run
from aioabort.testing import SweepRun

from .test_sweep_own import OWN


class _Opened:
    """Hands the bridge the sweep's open App, where its process's sync App would hand it the
    App opened on its loop thread (the part that differs: the sweep drives this loop)."""

    def __init__(self, app: aioabort.App) -> None:
        self.app = app

    def _opened(self) -> aioabort.App:
        return self.app


@dataclass
class _CeleryTask:
    """A Celery task that looks at its flag between its steps, as ``self.is_aborted()``
    does, and raises its TaskAborted when it is set; the bridge's run beside it."""

    runs: dict[str, tuple[Run, str]] = field(default_factory=dict)

    async def run(self, app: aioabort.App, task_id: str) -> None:
        bridge = Bridge.__new__(Bridge)
        bridge.pid, bridge.app = os.getpid(), _Opened(app)  # type: ignore[assignment]
        run = Run(task_id, "reports.build", {"celery_queue": "celery"})
        thread = asyncio.get_running_loop().create_task(self._task(run))
        try:
            await bridge._hold(run)  # the sweep's body: the bridge's own coroutine
        finally:
            self.runs[task_id] = (run, await thread)

    @staticmethod
    async def _task(run: Run) -> str:
        """The task's thread, played on the loop: it waits for its scope, then looks at its
        flag between three steps and hands its outcome over as ``Bridge.end`` does."""
        await asyncio.wrap_future(run.entered)
        how = "returned"
        for _ in range(3):
            await asyncio.sleep(0)
            if run.is_aborted():
                scope = run.scope
                run.outcome = TaskAborted(run.id, scope.reason if scope else None)
                how = "raised TaskAborted"
                break
        run.handed = True
        run.done.set()
        await asyncio.wrap_future(run.ended)
        return how

    def without_scope(self) -> str:
        return "the bridge entered no scope"


async def test_the_bridge_records_what_the_task_did_wherever_the_abort_lands() -> None:
    task = _CeleryTask()
    app = aioabort.App("memory://")

    async def check(swept: SweepRun) -> None:
        run, how = task.runs.pop(swept.task_id)
        assert run.entered.done() and run.ended.done(), "a hand-over to the thread was left"
        record = await app.handle(swept.task_id).record()
        expected = TaskState.ABORTED if how == "raised TaskAborted" else TaskState.SUCCESS
        assert record.state is expected, (how, record)
        assert record.labels == {"celery_queue": "celery"}

    async with app:
        report = await sweep(task, check, app, 10.0, OWN)
    assert report.ok, str(report)
    # Inside its scope the bridge's coroutine waits for the task and nothing else: one point,
    # where the abort reaches the task's flag and the task, looking, raises.
    assert len(report.runs) == 1, report.runs
    assert report.runs[0].location.startswith("_bridge.py:"), report.runs
    assert report.runs[0].state is TaskState.ABORTED
