"""One aioabort App per Celery worker process, and a run of each abortable task inside it.

Celery's signals come in, aioabort's calls go out. Each process that runs tasks (a prefork
child, a threads or solo worker) holds one :class:`aioabort.sync.App` on its private loop
thread, opened after the fork. A task's run is an abort scope with Celery's task id, entered
and left on that loop by a small coroutine (:meth:`Bridge._hold`) while the task runs in its
own thread: the watcher delivers an abort to the scope by push, and the task reads the
scope's flag, a local read. The scope's body only waits (shielded) for the task's outcome,
so an abort never ends the record while the task still runs: the record says ABORTED only if
the task raised its ``TaskAborted``, as the scope of an async task does.

A store that cannot be reached never fails a task: the task runs untracked, the run keeps
trying to enter its scope in the background (its record catches up, even after the task
ended), and the worker's log says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any

import anyio

from .. import _ending
from .._app import App as AsyncApp
from .._errors import StoreError, TaskAborted, TaskStateError, UsageError
from .._scope import AbortScope
from .._types import check_task_id
from ..sync import App as SyncApp, _loop

logger = logging.getLogger("aioabort.celery")

#: How long a task waits, at its start, for its scope to be entered before it runs untracked
#: (a store that answers takes milliseconds; one that is down retries for longer).
START_WAIT = 2.0
#: How long a task waits, at its end, for its end to be recorded before Celery goes on.
END_WAIT = 2.0
#: The longest pause between two attempts to enter the scope of a run the store missed.
CATCH_UP_MAX_PAUSE = 2.0


class Run:
    """One run of an abortable task: read by the task's thread, written by the loop."""

    __slots__ = (
        "done",
        "ended",
        "entered",
        "error",
        "handed",
        "id",
        "labels",
        "name",
        "outcome",
        "retry",
        "scope",
    )

    def __init__(self, task_id: str, name: str, labels: dict[str, str]) -> None:
        self.id = task_id
        self.name = name
        self.labels = labels
        #: the scope, once entered (``None`` while the store has not taken the start)
        self.scope: AbortScope | None = None
        #: set by the loop once the start is known (the scope, or an abort before the start)
        self.entered: concurrent.futures.Future[AbortScope | None] = concurrent.futures.Future()
        #: set by the task's thread when the task has returned or raised
        self.done = asyncio.Event()
        self.outcome: BaseException | None = None
        #: set by the loop once the end is recorded (or handed to the retries)
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.error: tuple[str, str] | None = None
        #: Celery will run the task again (``self.retry()``): the record goes back to PENDING
        self.retry = False
        #: the outcome was handed over (once: a retry hands it before Celery's own exception)
        self.handed = False

    def is_aborted(self) -> bool:
        scope = self.scope
        return scope is not None and scope.is_aborted()


class Bridge:
    """This process's link to the store for one Celery app."""

    def __init__(self, url: str, settings: dict[str, Any]) -> None:
        self.pid = os.getpid()
        self.app = SyncApp(url, **settings)

    def open(self) -> None:
        self.app.open()

    def close(self) -> None:
        if self.pid == os.getpid():
            self.app.close()

    # -- a run -------------------------------------------------------------------------------

    def begin(self, task_id: str, name: str, queue: str | None) -> Run:
        """Enter the run's scope (on the loop) before the task runs.

        :raises TaskAborted: when the task was aborted before it started: it must not run.
        """
        labels = {"celery_queue": queue} if queue else {}
        run = Run(task_id, name, labels)
        _loop.loop_thread().submit(self._hold(run))
        try:
            run.entered.result(timeout=START_WAIT)
        except concurrent.futures.TimeoutError:
            run.entered.cancel()  # no longer waited for: the scope enters when it can
            logger.warning(
                "task %s (%s) runs without its aioabort record: the store did not answer within "
                "%gs (the record catches up once it does)",
                task_id,
                name,
                START_WAIT,
                extra={"action": "celery_untracked", "task_id": task_id},
            )
        return run

    def end(self, run: Run, outcome: BaseException | None, *, retry: bool = False) -> None:
        """Hand the task's outcome to its run (from the task's thread) and wait, a bounded
        time, until its end is recorded. With ``retry`` (Celery runs it again) the record goes
        back to PENDING, for the next attempt to start."""
        if run.handed:
            return
        run.handed = True
        if retry:
            run.retry = True
        elif isinstance(outcome, TaskAborted) and outcome.task_id == run.id:
            run.outcome = TaskAborted(run.id, outcome.reason)
        elif outcome is not None:
            run.error = (type(outcome).__qualname__, str(outcome))
        _loop.loop_thread().loop.call_soon_threadsafe(run.done.set)
        try:
            run.ended.result(timeout=END_WAIT)
        except concurrent.futures.TimeoutError:
            logger.warning(
                "task %s ended but its aioabort record does not say so yet (the store is slow "
                "or down; it catches up)",
                run.id,
                extra={"action": "celery_end_pending", "task_id": run.id},
            )

    async def _hold(self, run: Run) -> None:
        try:
            await self._enter_until_it_lands(run)
        finally:
            _settle(run.entered, None)
            _settle(run.ended, None)

    async def _enter_until_it_lands(self, run: Run) -> None:
        pause = 0.05
        while True:
            try:
                app = self.app._opened() or await self.app._opened_on_loop()
                scope = AbortScope(run.id, app=app, name=run.name, labels=run.labels, detached=True)
                await self._one_run(app, scope, run)
                return
            except _Failed:
                return  # the task's exception, recorded FAILURE
            except TaskAborted as exc:
                if run.scope is not None:
                    return  # the task's own abort, recorded ABORTED
                _settle(run.entered, exc)  # aborted before it started: it never runs
                return
            except TaskStateError as exc:  # a redelivery of a run aioabort already has
                self._refused(run, exc)
                return
            except StoreError as exc:
                if run.scope is not None:
                    return  # entered: how it ended is kept and retried by the App
                self._store_down(run, exc)
            except Exception:
                logger.exception(
                    "task %s (%s): aioabort failed to track it",
                    run.id,
                    run.name,
                    extra={"action": "celery_untracked", "task_id": run.id},
                )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, CATCH_UP_MAX_PAUSE)

    async def _one_run(self, app: AsyncApp, scope: AbortScope, run: Run) -> None:
        async with scope:
            run.scope = scope
            if not _settle(run.entered, scope):
                logger.warning(
                    "task %s (%s): its aioabort record caught up",
                    run.id,
                    run.name,
                    extra={"action": "celery_caught_up", "task_id": run.id},
                )
            with anyio.CancelScope(shield=True):  # an abort must not end the record: the task
                await run.done.wait()  # decides, by raising its TaskAborted or not
            if run.retry:  # back to PENDING: the scope's own end write then finds no run
                await _ending.requeue(app.runtime, run.id)
            elif run.outcome is not None:
                raise run.outcome
            if run.error is not None:
                raise _stand_in(*run.error)
        _settle(run.ended, None)

    def _refused(self, run: Run, exc: TaskStateError) -> None:
        _settle(run.entered, None)
        logger.warning(
            "task %s (%s) runs without aioabort: %s",
            run.id,
            run.name,
            exc,
            extra={"action": "celery_untracked", "task_id": run.id},
        )

    def _store_down(self, run: Run, exc: StoreError) -> None:
        if _settle(run.entered, None):
            logger.warning(
                "task %s (%s) runs without its aioabort record: the store is unavailable "
                "(%s); retrying in the background, the record catches up",
                run.id,
                run.name,
                exc,
                extra={"action": "celery_untracked", "task_id": run.id},
            )


def _settle(future: concurrent.futures.Future[Any], value: object) -> bool:
    """Give ``future`` its result (an exception is raised by it); False if it already had
    one, or the task's thread stopped waiting for it (cancelled)."""
    try:
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True


class _Failed(Exception):
    """Stands for the exception a Celery task raised, on the loop (the task's own exception
    object stays with Celery's thread)."""


_stand_ins: dict[str, type[_Failed]] = {}


def _stand_in(qualname: str, message: str) -> _Failed:
    """An exception named as the task's was (the record's error names its type)."""
    kind = _stand_ins.get(qualname)
    if kind is None:
        kind = _stand_ins[qualname] = type(qualname.rpartition(".")[2], (_Failed,), {})
        kind.__qualname__ = qualname
    return kind(message)


# -- one bridge per process and Celery app -----------------------------------------------------

_lock = threading.Lock()
_bridges: dict[int, Bridge] = {}


def bridge_for(celery_app: Any) -> Bridge:
    """This process's bridge for ``celery_app``, made (and its store opened) on first use.

    :raises UsageError: when the app was never set up (:func:`aioabort.celery.setup`).
    """
    key = id(celery_app)
    bridge = _bridges.get(key)
    if bridge is not None and bridge.pid == os.getpid():
        return bridge
    with _lock:
        bridge = _bridges.get(key)
        if bridge is None or bridge.pid != os.getpid():
            if bridge is not None:
                _loop.inherit(bridge)  # a forked child: the parent's, left alone
            url = configured_url(celery_app)
            bridge = _bridges[key] = Bridge(
                url, dict(celery_app.conf.get("aioabort_settings") or {})
            )
        return bridge


def configured_url(celery_app: Any) -> str:
    """The store URL set with :func:`aioabort.celery.setup` (or ``conf.aioabort_url``).

    :raises UsageError: when there is none.
    """
    url = celery_app.conf.get("aioabort_url")
    if not url:
        raise UsageError(
            f"the Celery app {celery_app.main!r} has aioabort AbortableTask tasks but no aioabort "
            "store: call aioabort.celery.setup(celery_app, url) where the app is made (or set "
            "celery_app.conf.aioabort_url)"
        )
    return str(url)


def close_all() -> None:
    """Close this process's bridges (a worker process's end)."""
    with _lock:
        bridges = [b for b in _bridges.values() if b.pid == os.getpid()]
        _bridges.clear()
    for bridge in bridges:
        try:
            bridge.close()
        except Exception:
            logger.warning("closing the aioabort store failed", exc_info=True)


def checked_id(task_id: str) -> str:
    """Celery accepts any string as a task id; aioabort's ids are stricter.

    :raises InvalidTaskId: for an id aioabort refuses.
    """
    return check_task_id(task_id)
