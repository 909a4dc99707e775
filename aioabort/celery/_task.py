"""``AbortableTask`` and ``AbortableAsyncResult``: Celery's abortable classes, by the same
names, with aborts that arrive by push and end states that say what the task did."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

from celery import Task, current_app
from celery.exceptions import Ignore, Retry, TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from .._errors import InvalidTaskId, TaskAborted
from .._state import TaskState
from .._types import AbortReason
from . import _bridge
from ._bridge import Run

logger = logging.getLogger("aioabort.celery")

#: The state Celery's abortable writes, and this bridge writes for a task stopped by its abort.
ABORTED = "ABORTED"

#: How often ``get()`` looks for ``ABORTED`` (one result-backend read) while it waits.
_GET_SLICE = 0.5


def _reason(meta: dict[str, Any]) -> AbortReason | None:
    """The reason the worker stored as the result of an ABORTED task."""
    try:
        return AbortReason(
            str(meta["code"]),
            str(meta.get("message") or ""),
            meta.get("by"),
            datetime.fromisoformat(str(meta["at"])),
        )
    except (KeyError, TypeError, ValueError):  # not a reason the bridge wrote
        return None


#: The run of the task this thread is running (Celery runs one task at a time per thread).
_current = threading.local()


class AbortableAsyncResult(AsyncResult):  # type: ignore[misc]
    """The result of an :class:`AbortableTask` (what its ``delay()`` and ``apply_async()``
    return): Celery's ``AsyncResult`` with :meth:`abort`.
    """

    def is_aborted(self) -> bool:
        """Whether Celery's state is ``ABORTED``: the task was stopped by its abort (or was
        aborted before it started). ``app.handle(id).is_aborted()`` says whether an abort was
        asked for."""
        return bool(self.state == ABORTED)

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> Any:
        """Celery's ``get()``, which also returns for a task stopped by its abort: ``ABORTED``
        is not one of Celery's ready states, so Celery's own would wait until ``timeout``.

        :raises aioabort.TaskAborted: when the task ended ``ABORTED`` (with ``propagate=False``
            its reason, as a dict, is returned instead).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.state == ABORTED:
                meta = self.result if isinstance(self.result, dict) else None
                if not propagate:
                    return meta
                raise TaskAborted(self.id, None if meta is None else _reason(meta))
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return super().get(
                    timeout=_GET_SLICE if left is None else max(0.0, min(left, _GET_SLICE)),
                    propagate=propagate,
                    **kwargs,
                )
            except CeleryTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def abort(self, reason: str | AbortReason | None = None, *, by: str | None = None) -> bool:
        """Ask the task to stop, with a reason kept on its aioabort record. Sync; the request
        is committed when it returns, and the task's ``is_aborted()`` turns true within
        milliseconds wherever it runs. A task that has not started yet never runs (Celery's
        state becomes ``ABORTED`` at once).

        :param reason: a message (the reason's code is ``user``) or an
            :class:`aioabort.AbortReason`.
        :param by: who asks; defaults to ``host:pid``.
        :returns: whether this call recorded a new abort request (False for a task that has
            ended, or one already asked to stop).
        :raises BlockingCallInEventLoop: when called on a running event loop (in async code,
            use ``aioabort.App.handle(id).abort()``).
        """
        handle = _bridge.bridge_for(self.app).app.handle(self.id)
        recorded = handle.abort(reason, by=by, create=True)
        if recorded:
            record = handle.record()
            if record.state is TaskState.ABORTED and record.reason is not None:
                # Not started: it never will, so Celery may say ABORTED now.
                self.backend.store_result(self.id, record.reason.to_dict(), ABORTED, None)
        return recorded


class _OnTheInstance:
    """A method that also works on a class-based task's class, as Celery 3.1 allowed
    (``MyLongRunningTask.delay()``): called on the class, it is the registered instance's."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            obj = owner.__dict__.get("_aioabort_instance")
            if obj is None:
                return self.fn
        return self.fn.__get__(obj, owner)


class AbortableTask(Task):  # type: ignore[misc]
    """A Celery task that can be aborted: ``@app.task(bind=True, base=AbortableTask)``, or a
    subclass with a ``run()`` method.

    Each run is an aioabort record with Celery's task id. :meth:`is_aborted` reads a flag
    that the abort sets by push (no database round trip); :meth:`raise_if_aborted` stops the
    task, which then ends ``ABORTED`` in aioabort and in Celery's result backend. A task that
    returns after its abort ends ``SUCCESS``, with the request kept on its record.

    The Celery app must be set up with :func:`aioabort.celery.setup`; a worker refuses to
    start otherwise.
    """

    abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__ and not cls.__dict__.get("_decorated"):
            # A class-based task (Celery 3.1 style): registered with the current app, as
            # Celery 3.1 did, so that ``MyTask.delay()`` and workers find it.
            cls._aioabort_instance = current_app._get_current_object().register_task(cls())

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AbortableAsyncResult:
        """An :class:`AbortableAsyncResult` for ``task_id``."""
        return AbortableAsyncResult(
            task_id, backend=self.backend, task_name=self.name, app=self.app, **kwargs
        )

    def _apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        """Celery's ``apply_async``; a ``task_id`` aioabort cannot hold is refused here.

        :raises InvalidTaskId: for an empty, oversized or non-text ``task_id``.
        """
        if task_id is not None:
            _bridge.checked_id(task_id)
        return super().apply_async(args, kwargs, task_id=task_id, **options)

    apply_async = _OnTheInstance(_apply_async)
    delay = _OnTheInstance(Task.delay)

    def is_aborted(self, **kwargs: Any) -> bool:
        """Whether an abort of this run was asked for: a local read of a flag the abort sets
        by push. With ``task_id=`` (Celery's keyword) another task's record is read."""
        run: Run | None = getattr(_current, "run", None)
        task_id = kwargs.get("task_id")
        if run is not None and (task_id is None or task_id == run.id):
            return run.is_aborted()
        if task_id is None:
            return False  # not running in a worker: nothing can abort it
        return _bridge.bridge_for(self.app).app.handle(task_id).is_aborted()

    def raise_if_aborted(self) -> None:
        """Raise :class:`aioabort.TaskAborted` once an abort of this run was asked for; let it
        propagate and the task ends ``ABORTED`` (with the reason) in aioabort and in Celery."""
        run: Run | None = getattr(_current, "run", None)
        if run is not None and run.is_aborted():
            scope = run.scope
            raise TaskAborted(run.id, None if scope is None else scope.reason)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``retry()``; the run's record goes back to PENDING first, so the next
        attempt (in whatever process) starts it again under the same id."""
        run: Run | None = getattr(_current, "run", None)
        if run is not None and run.id == self.request.id:
            _bridge.bridge_for(self.app).end(run, None, retry=True)
        return super().retry(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or not request.id:
            return super().__call__(*args, **kwargs)
        bridge = _bridge.bridge_for(self.app)
        try:
            task_id = _bridge.checked_id(request.id)
        except InvalidTaskId as exc:
            logger.warning("task %r runs without aioabort: %s", request.id, exc)
            return super().__call__(*args, **kwargs)
        queue = (request.delivery_info or {}).get("routing_key")
        try:
            run = bridge.begin(task_id, self.name, queue)
        except TaskAborted as exc:
            self._stopped(exc, "aborted before it started")
        outer, _current.run = getattr(_current, "run", None), run
        try:
            value = super().__call__(*args, **kwargs)
        except TaskAborted as exc:
            bridge.end(run, exc)
            if exc.task_id == run.id:
                self._stopped(exc, "stopped by its abort")
            raise
        except Retry as exc:
            bridge.end(run, exc, retry=True)
            raise
        except BaseException as exc:
            bridge.end(run, exc)
            raise
        finally:
            _current.run = outer
        bridge.end(run, None)
        return value

    def _stopped(self, exc: TaskAborted, how: str) -> Any:
        """Say ABORTED in Celery's result backend (with the reason) and end the run there."""
        reason = exc.reason
        logger.info("task %s %s: %s", exc.task_id, how, reason)
        if not self.request.ignore_result:
            meta = None if reason is None else reason.to_dict()
            self.update_state(task_id=exc.task_id, state=ABORTED, meta=meta)
        raise Ignore() from exc
