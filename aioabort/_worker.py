"""The worker: claims queued tasks and runs each in an abort scope, with graceful shutdown.

One worker per process (``aioabort worker MODULE:APP``), or embedded with
``await Worker(app).run()``. It claims PENDING records of its queues atomically (``BEGIN
IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), as many as it has free
slots, and wakes on new work through the App's watcher (a NOTIFY on PostgreSQL, the change
detector on SQLite), with a slow poll only as a safety net. Between claims it sleeps until the
next queued task is due (its ``not_before``) or expires, as the store says in one indexed read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio

from . import _ending, _obedience
from ._aborting import stop_here
from ._errors import AioabortError, UsageError
from ._obedience import Escalation
from ._queueing import DEFAULT_QUEUE, check_queue
from ._runner import execute, fail_unknown, make_scope
from ._scope import AbortScope
from ._settings import check_time_limit
from ._shield import shielded
from ._state import TaskRecord, TaskState
from ._types import AbortReason, reason_text

#: Seconds a worker told to give up (:meth:`Worker.kill`) still waits for its tasks to stop.
KILL_WAIT = 2.0

if TYPE_CHECKING:
    from ._app import App
    from ._runtime import Runtime

logger = logging.getLogger("aioabort.worker")


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """What a worker has done so far.

    :ivar running: tasks running now.
    :ivar claimed: tasks claimed from the queue.
    :ivar succeeded: ended SUCCESS.
    :ivar failed: ended FAILURE (including unknown task names).
    :ivar aborted: ended ABORTED.
    :ivar requeued: retryable tasks put back on the queue at shutdown.
    """

    running: int
    claimed: int
    succeeded: int
    failed: int
    aborted: int
    requeued: int


@dataclass(slots=True)
class _Running:
    """One claimed task: its asyncio task, the record as claimed, and its scope (``None`` for
    a task name this worker does not know)."""

    task: asyncio.Task[Any]
    record: TaskRecord
    scope: AbortScope | None


@final
class Worker:
    """Runs an App's queued tasks in this process.

    Example::

        async with app:
            worker = Worker(app, concurrency=20, queues=["default", "reports"])
            await worker.run()          # until worker.stop(); SIGTERM in the CLI

    :param app: an App with the tasks registered (``@app.task``); it must be open to run.
    :param concurrency: how many tasks run at once.
    :param queues: the queues to claim from.
    :param grace: on :meth:`stop`, seconds running tasks get to finish before they are aborted
        with reason code ``shutdown``.
    :param poll_interval: the safety-net poll for new work, in seconds.
    :param kill_after: after the shutdown's abort, seconds tasks get to stop before the worker
        gives up on them.
    :param kill_stubborn: give up on a task still running this many seconds after its abort
        reached it: stop claiming, drain the rest as :meth:`stop` does, end it FAILURE
        (cause ``killed``) and leave it behind in :attr:`stubborn` (the CLI then exits 75,
        for its supervisor to restart it). ``None``: never.
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int = 10,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        grace: float = 10.0,
        poll_interval: float = 1.0,
        kill_after: float = 30.0,
        kill_stubborn: float | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(f"concurrency must be a positive int, got {concurrency!r}")
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise UsageError("a worker needs at least one queue")
        if not grace >= 0:
            raise UsageError(f"grace must be a non-negative number of seconds, got {grace!r}")
        if not kill_after >= 0:
            raise UsageError(
                f"kill_after must be a non-negative number of seconds, got {kill_after!r}"
            )
        kill_stubborn = check_time_limit(kill_stubborn, "kill_stubborn")
        self._escalation = None
        if kill_stubborn is not None:
            self._escalation = Escalation(give_up_after=kill_stubborn, give_up=self._give_up_on)
        self.app = app
        self.concurrency = concurrency
        self.queues = [check_queue(q) for q in queues]
        self.grace = grace
        self.poll_interval = poll_interval
        self.kill_after = kill_after
        #: Ids of the tasks that were still running when the worker gave up on them (they
        #: ignored their abort): recorded FAILURE (cause ``killed``) or requeued, and left
        #: behind. When there are any, the process should exit: they may never end.
        self.abandoned: list[str] = []
        #: Ids of the tasks this worker gave up on for ignoring their abort ``kill_stubborn``
        #: seconds (also in :attr:`abandoned`).
        self.stubborn: list[str] = []
        self._escalating: list[asyncio.Task[None]] = []
        self._running: dict[str, _Running] = {}
        self._killed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot = asyncio.Event()
        self._started = asyncio.Event()
        #: The last claim took all it asked for (see :meth:`_claim`).
        self._busy = False
        self._counts = {"claimed": 0, "succeeded": 0, "failed": 0, "aborted": 0, "requeued": 0}

    def __repr__(self) -> str:
        return f"<aioabort.Worker queues={self.queues} concurrency={self.concurrency}>"

    def statistics(self) -> WorkerStatistics:
        """Counters of what this worker did."""
        return WorkerStatistics(running=len(self._running), **self._counts)

    @property
    def started(self) -> asyncio.Event:
        """Set once :meth:`run` is claiming."""
        return self._started

    def stop(self) -> None:
        """Stop claiming; running tasks get ``grace`` seconds, then are aborted (``shutdown``).

        Calling it a second time stops at once: running tasks are aborted now.
        """
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    def kill(self) -> None:
        """Give up on running tasks (a second SIGTERM/SIGINT): abort them at once (reason code
        ``shutdown``); those still running :data:`KILL_WAIT` seconds later are recorded as
        ended — FAILURE with cause ``killed``, or back to PENDING if retryable — and left
        behind in :attr:`abandoned`, so :meth:`run` returns within seconds."""
        self._killed.set()
        self.stop_now()

    def stop_now(self) -> None:
        """Stop claiming and abort running tasks at once (reason code ``shutdown``)."""
        self._stopping.set()
        self._hurry.set()

    async def run(self) -> None:
        """Claim and run tasks until :meth:`stop`; then shut down gracefully and return."""
        runtime = self.app.runtime
        watcher = runtime.watcher
        logger.info(
            "worker started",
            extra={
                "action": "worker_started",
                "queues": self.queues,
                "concurrency": self.concurrency,
                "tasks": sorted(self.app.registry),
            },
        )
        await watcher.want_queues(self.queues)  # the store pushes new work on them here
        await self._publish(runtime, serving=True)
        self._started.set()
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._running)
                if free <= 0:
                    self._slot.clear()
                    await self._wait_any(self._slot.wait(), None)
                    continue
                changed = watcher.change_event()  # taken before we look, so no wake-up is lost
                try:
                    records, wait = await self._claim(runtime, free)
                except AioabortError as exc:
                    logger.warning(
                        "claim failed; retrying",
                        extra={"action": "claim_failed", "error": str(exc)},
                    )
                    await self._wait_any(anyio.sleep(min(self.poll_interval, 1.0)), None)
                    continue
                for record in records:
                    self._counts["claimed"] += 1
                    self._start(record)
                if len(records) < free:
                    # Until new work is pushed, the next task is due or expires, or the poll.
                    await self._wait_any(changed.wait(), wait)
        finally:
            watcher.drop_queues(self.queues)
            await self._shutdown()
            await self._publish(runtime, serving=False)

    async def _claim(self, runtime: Runtime, free: int) -> tuple[list[TaskRecord], float]:
        """Claim up to ``free`` due tasks (and end the expired ones first); with how long to
        sleep if that was not enough: until the next task is due or expires (the store's
        earliest ``not_before``/``expires_at``), at most the poll interval. After a full
        claim, more is likely queued: it claims first and reads only if that came back short
        (expired tasks are ended then, or by the fleet's reaper; a claim never takes one)."""
        store = runtime.store
        names = list(self.app.registry)  # only what it can run: another version's stay queued
        if self._busy:
            records = await self._take(runtime, free, names)
            if len(records) == free:
                return records, 0.0
            return records, (await store.next_due(self.queues, names)).wait(self.poll_interval)
        due = await store.next_due(self.queues, names)
        if due.expiring is not None and due.expiring <= 0:
            await _ending.expire(store, runtime.owner)
        records = []
        if due.claimable is not None and due.claimable <= 0:
            records = await self._take(runtime, free, names)
        return records, due.wait(self.poll_interval)

    async def _take(self, runtime: Runtime, free: int, names: list[str]) -> list[TaskRecord]:
        records = await shielded(
            runtime.store.claim(owner=runtime.owner, queues=self.queues, limit=free, names=names)
        )
        self._busy = len(records) == free
        return records

    async def _publish(self, runtime: Runtime, *, serving: bool) -> None:
        """Tell the store what this worker claims (or that it stopped): what
        :meth:`App.unclaimed` judges by. Best effort: a store that is down now is no reason
        not to run, and the owner's rows go with it when it is reaped or closes. A queue
        that another worker of this App still claims from stays published."""
        store, owner = runtime.store, runtime.owner
        try:
            if serving:
                runtime.served.add(self.queues)
                await shielded(
                    store.serve(owner, queues=self.queues, names=sorted(self.app.registry))
                )
            else:
                idle = runtime.served.remove(self.queues)
                if idle:
                    await shielded(store.unserve(owner, queues=idle))
        except AioabortError as exc:
            logger.warning(
                "could not publish the tasks this worker runs",
                extra={"action": "serve_failed", "error": str(exc)},
            )

    def _start(self, record: TaskRecord) -> None:
        task = self.app.registry.get(record.name or "")
        coro: Coroutine[Any, Any, object]
        scope = None
        if task is None:
            coro = fail_unknown(self.app.runtime, record, list(self.app.registry))
            self._counts["failed"] += 1
            logger.error(
                "unknown task name in the queue",
                extra={"action": "unknown_task", "task_id": record.id, "task_name": record.name},
            )
        else:
            scope = make_scope(self.app, task, record, claimed=True, escalation=self._escalation)
            coro = execute(scope, task, record)
        running = asyncio.get_running_loop().create_task(coro, name=f"aioabort-task-{record.id}")
        self._running[record.id] = _Running(running, record, scope)
        running.add_done_callback(functools.partial(self._done, record.id))

    def _done(self, task_id: str, task: asyncio.Task[Any]) -> None:
        self._running.pop(task_id, None)
        self._slot.set()
        if task.cancelled() or task.exception() is not None:
            return
        scope = task.result()
        if scope is None or scope.record is None:
            return
        if scope.requeued:
            self._counts["requeued"] += 1
        elif scope.record.state is TaskState.SUCCESS:
            self._counts["succeeded"] += 1
        elif scope.record.state is TaskState.FAILURE:
            self._counts["failed"] += 1
        elif scope.record.state is TaskState.ABORTED:
            self._counts["aborted"] += 1

    async def _wait_any(self, awaitable: Awaitable[Any], timeout: float | None) -> None:
        """Wait for ``awaitable``, the stop signal, or ``timeout`` — whichever comes first."""
        await _first_of(awaitable, self._stopping.wait(), timeout=timeout)

    def _tasks(self) -> set[asyncio.Task[Any]]:
        return {running.task for running in self._running.values()}

    def _give_up_on(self, task_id: str) -> None:
        """A task still runs ``kill_stubborn`` seconds after its abort reached it: leave it
        behind (its end recorded), stop claiming and drain the rest."""
        running = self._running.pop(task_id, None)
        if running is None:
            return
        self.stubborn.append(task_id)
        self.abandoned.append(task_id)
        self._slot.set()
        self._escalating.append(asyncio.get_running_loop().create_task(self._escalate(running)))
        self.stop()

    async def _escalate(self, running: _Running) -> None:
        runtime, task_id = self.app.runtime, running.record.id
        after = self._escalation.give_up_after if self._escalation is not None else None
        reason = running.scope.reason if running.scope is not None else None
        logger.error(
            "task %s ignored its abort (%s) for %gs: the worker gives up on it (FAILURE, cause "
            "killed), drains the other tasks and exits",
            task_id,
            reason_text(reason),
            after,
            extra={"action": "task_escalated", "task_id": task_id, "seconds": after},
        )
        detail = f"given up after {after:g}s: ended FAILURE (killed), its worker exits"
        await _obedience.note(runtime, task_id, "escalated", detail)
        await _leave_behind(runtime, running, retryable=False, reason_code=None)

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._escalating:  # the stubborn tasks' ends are written before anything else
                await asyncio.gather(*self._escalating, return_exceptions=True)
            if self._running and not self._hurry.is_set():
                logger.info(
                    "worker stopping: waiting for running tasks",
                    extra={
                        "action": "worker_draining",
                        "running": len(self._running),
                        "grace": self.grace,
                    },
                )
                await _first_of(asyncio.wait(self._tasks()), self._hurry.wait(), timeout=self.grace)
            if self._running:
                await self._abort_running()
            logger.info("worker stopped", extra={"action": "worker_stopped", **self._counts})

    async def _abort_running(self) -> None:
        runtime = self.app.runtime
        reason = AbortReason(AbortReason.SHUTDOWN, "the worker is shutting down")
        for task_id in list(self._running):
            await stop_here(runtime, task_id, reason)
        # Aborted tasks record their end; kill_after seconds (a second signal: KILL_WAIT)
        # for those that take time to stop, then the worker gives up on the rest.
        if self._running and not self._killed.is_set():
            await _first_of(
                asyncio.wait(self._tasks()), self._killed.wait(), timeout=self.kill_after
            )
        if self._running and self._killed.is_set():
            await asyncio.wait(self._tasks(), timeout=KILL_WAIT)
        if self._running:
            await self._give_up(runtime)

    async def _give_up(self, runtime: Runtime) -> None:
        """Record the end of the tasks that ignored their abort, and leave them behind: back
        to the queue where the requeue rule says so (a retryable task stopped by this
        shutdown), else FAILURE with cause ``killed``."""
        for task_id, running in list(self._running.items()):
            await _leave_behind(
                runtime,
                running,
                retryable=running.record.retryable,
                reason_code=AbortReason.SHUTDOWN,
            )
            self.abandoned.append(task_id)
        logger.error(
            "worker gave up on tasks that ignored their abort",
            extra={"action": "tasks_killed", "task_ids": list(self.abandoned)},
        )


async def _leave_behind(
    runtime: Runtime, running: _Running, *, retryable: bool, reason_code: str | None
) -> None:
    """Record the end of a run that ignored its abort (FAILURE, cause ``killed``; back to the
    queue where the requeue rule says so) and leave it running behind: the App's shutdown
    must not abort it again, and nobody waits for it. ``reason_code``: its abort's code when
    the scope saw none."""
    reason = running.scope.reason if running.scope is not None else None
    await _ending.conclude(
        runtime,
        running.record.id,
        TaskState.FAILURE,
        retryable=retryable,
        stopped_by_abort=True,
        reason_code=reason_code if reason is None else reason.code,
        error=_ending.KILLED,
    )
    runtime.watcher.forget(running.record.id)
    running.task.cancel()  # one more chance


async def _first_of(*awaitables: Awaitable[Any], timeout: float | None) -> None:
    """Wait until the first of ``awaitables`` is done, or ``timeout``; cancel the others."""
    futures = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
