"""Tasks: async functions registered on an App, queued with ``delay()`` or run here with
``spawn()``, each run inside an abort scope.

A task's record holds its JSON arguments (``{"args": [...], "kwargs": {...}}``) and, when it
ends SUCCESS, its JSON result. The worker (``_worker``) claims queued records and calls
:func:`execute`; ``spawn()`` calls it in this process.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, final

from . import _ending, _runtime
from ._errors import InvalidArguments, UsageError
from ._handle import AbortHandle
from ._obedience import Escalation
from ._queueing import DEFAULT_QUEUE, check_queue, queue_task
from ._retry import RetryPolicy, retry_policy
from ._scope import AbortScope
from ._settings import check_time_limit
from ._state import TaskRecord, TaskState
from ._types import (
    MAX_TASK_NAME_LENGTH,
    check_name,
    dump_json,
)

if TYPE_CHECKING:
    from ._runtime import Host, Runtime

logger = logging.getLogger("aioabort.runner")

P = ParamSpec("P")
R = TypeVar("R")


@final
class Task(Generic[P, R]):
    """An async function registered with :meth:`App.task`.

    Example::

        @app.task(time_limit=300)
        async def build_report(report_id: int) -> str:
            scope = aioabort.current_scope()
            ...
            return url

        handle = await build_report.delay(42)        # queued for any worker
        url = await handle.result(timeout=600)       # or TaskAborted / TaskFailed

    Calling the task object directly (``await build_report(42)``) runs the function here,
    without a record or a scope.

    :ivar name: the registered name (default ``module.qualname``).
    :ivar queue: the queue ``delay()`` puts it on.
    :ivar time_limit: seconds before it is aborted with reason code ``timeout``, or ``None``.
    :ivar retryable: whether a run cut off by a worker's shutdown or a lost worker goes back
        to PENDING instead of ending.
    :ivar retry: when a queued run that raised is tried again (``retry_on=``), or ``None``.
    :ivar abort_grace: seconds a run may go on after its abort reached it before it is marked
        as ignoring it, or ``None`` (the App's ``ignored_abort_after``).
    """

    def __init__(
        self,
        host: Host,
        fn: Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        time_limit: float | None,
        retryable: bool,
        retry: RetryPolicy | None = None,
        abort_grace: float | None = None,
    ) -> None:
        self._host = host
        self.fn = fn
        self.name = name
        self.queue = queue
        self.time_limit = time_limit
        self.retryable = retryable
        self.retry = retry
        self.abort_grace = abort_grace
        self._signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @classmethod
    def of(
        cls,
        host: Host,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        time_limit: float | None = None,
        retryable: bool = False,
        retry_on: object = None,
        max_retries: object = 3,
        retry_backoff: object = 1.0,
        abort_grace: object = None,
    ) -> Task[Any, Any]:
        """A task for ``fn`` with its settings checked (what ``@app.task`` registers).

        :raises UsageError: for a function that is not ``async def`` or a bad setting.
        """
        if not inspect.iscoroutinefunction(fn):
            raise UsageError(
                f"{getattr(fn, '__qualname__', fn)!r} is not an async def function; "
                "aioabort tasks are coroutines"
            )
        return Task(
            host,
            fn,
            name=task_name(fn, name),
            queue=check_queue(queue),
            time_limit=check_time_limit(time_limit),
            retryable=bool(retryable),
            retry=retry_policy(retry_on, max_retries, retry_backoff),
            abort_grace=check_time_limit(abort_grace, "abort_grace"),
        )

    def __repr__(self) -> str:
        return f"<aioabort.Task {self.name!r} queue={self.queue!r}>"

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.fn(*args, **kwargs)

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AbortHandle[R]:
        """Queue a run for any worker: a PENDING record with the JSON arguments.

        Inside a scope, the new task is its child: aborting the parent aborts it too.

        :raises InvalidArguments: when the arguments do not fit the function's signature.
        :raises NotJSONSerializable: when they are not JSON (nothing is written).
        """
        return await self.apply(args, kwargs)

    async def spawn(self, *args: P.args, **kwargs: P.kwargs) -> AbortHandle[R]:
        """Run now in this process, under the App (for servers that run no worker).

        It is recorded like a queued task and abortable from any process all the same.
        """
        return await self.apply(args, kwargs, spawn=True)

    async def apply(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        detached: bool = False,
        spawn: bool = False,
        labels: dict[str, str] | None = None,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        time_limit: float | None = None,
        key: str | None = None,
        supersede: bool = False,
    ) -> AbortHandle[R]:
        """``delay()``/``spawn()`` with options: ``apply([42], countdown=600, expires=3600)``.

        :param task_id: the id (default: a random one).
        :param queue: another queue than the task's own.
        :param detached: do not link it to the enclosing scope as a child.
        :param spawn: run it in this process instead of queueing it.
        :param labels: ``{"user": "alice"}``: for ``app.tasks(labels=...)`` and
            ``app.abort_many(labels=...)``.
        :param countdown: seconds before a worker may start it, or ``eta`` (aware datetime);
            ``expires``: unstarted then, it ends ABORTED (code ``expired``); ``time_limit``:
            for this run; ``key`` (+ ``supersede``): see :func:`~aioabort._queueing.queue_options`.
        :raises TaskAlreadyExists: if ``task_id`` is taken.
        :raises UsageError: for bad labels or options (``InvalidOption``); nothing is written.
        """
        kwargs = dict(kwargs or {})
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"wrong arguments for task {self.name!r}: {exc}") from None
        record = await queue_task(
            self._host,
            self.name,
            args,
            kwargs,
            task=self,
            task_id=task_id,
            queue=queue,
            detached=detached,
            spawn=spawn,
            labels=labels,
            countdown=countdown,
            eta=eta,
            expires=expires,
            time_limit=time_limit,
            key=key,
            supersede=supersede,
        )
        if spawn and record.state is TaskState.PENDING:
            scope = make_scope(self._host, self, record, claimed=False)
            _runtime.resolve(self._host).spawn(
                execute(scope, self, record), f"aioabort-spawn-{record.id}"
            )
        return AbortHandle(self._host, record.id)


def decode_arguments(record: TaskRecord) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments stored on ``record``."""
    data = record.args
    if data is None:
        return [], {}
    if not isinstance(data, dict):
        raise TypeError(f"stored arguments are not an object: {json.dumps(data)[:100]}")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TypeError("stored arguments must be {'args': [...], 'kwargs': {...}}")
    return list(args), dict(kwargs)


def make_scope(
    host: Host,
    task: Task[Any, Any],
    record: TaskRecord,
    *,
    claimed: bool,
    escalation: Escalation | None = None,
) -> AbortScope:
    """The scope a run of ``task`` for ``record`` runs in. With ``claimed`` the record was
    already moved to STARTED for this process (a worker's claim); otherwise entering the scope
    starts it. ``escalation``: a worker's, which gives up on a stubborn run."""
    if task.abort_grace is not None:
        escalation = dataclasses.replace(escalation or Escalation(), grace=task.abort_grace)
    return AbortScope(
        record.id,
        app=host,
        suppress=True,
        name=task.name,
        time_limit=task.time_limit if record.time_limit is None else record.time_limit,
        detached=True,  # the parent link is on the record already
        _claimed=record if claimed else None,
        _retryable=task.retryable,
        _retry=task.retry if record.queue is not None else None,  # a spawned run has no queue
        _escalation=escalation,
    )


async def execute(scope: AbortScope, task: Task[Any, Any], record: TaskRecord) -> AbortScope | None:
    """Run ``task`` for ``record`` inside ``scope`` (:func:`make_scope`); the scope stores the
    result or the error. Never raises for the task's own outcome."""
    # One line per task at INFO (its end), the start at DEBUG: a line per task costs the
    # worker's throughput (measured: two lines a task, 26 % fewer no-op tasks per second).
    info = logger.isEnabledFor(logging.INFO)
    try:
        async with scope:
            if scope.is_aborted():  # aborted before it began: stop before the function runs
                await scope.checkpoint()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "task %s (%s) started",
                    record.id,
                    task.name,
                    extra={"action": "task_started", "task_id": record.id, "task_name": task.name},
                )
            args, kwargs = decode_arguments(record)
            result = await task.fn(*args, **kwargs)
            scope._set_result(dump_json(result, f"the result of {task.name!r}"))
    except UsageError as exc:
        logger.warning(
            "task could not start",
            extra={"action": "task_refused", "task_id": record.id, "error": str(exc)},
        )
        return None
    except Exception:
        # The scope recorded FAILURE with the exception; the worker goes on.
        logger.info(
            "task %s (%s) failed",
            record.id,
            task.name,
            extra={"action": "task_failed", "task_id": record.id, "task_name": task.name},
            exc_info=True,
        )
        return scope
    if info:
        _log_end(scope, task.name)
    return scope


def _log_end(scope: AbortScope, name: str) -> None:
    """The task's one line at INFO: how it ended; for an abort or a requeue, why and who asked."""
    record = scope.record
    state = record.state.value if record is not None else "?"
    reason = record.reason if record is not None and record.reason else scope.reason
    how = "requeued" if scope.requeued else f"ended {state}"
    if reason is not None and (scope.requeued or state == TaskState.ABORTED.value):
        how += f": {_one_line(str(reason))}"
    logger.info(
        "task %s (%s) %s",
        scope.id,
        name,
        how,
        extra={
            "action": "task_requeued" if scope.requeued else "task_ended",
            "task_id": scope.id,
            "task_name": name,
            "state": state,
            "reason": None if reason is None else reason.to_dict(),
        },
    )


def _one_line(text: str) -> str:
    """``text`` with line breaks and other controls escaped: a reason cannot forge log lines."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


async def fail_unknown(runtime: Runtime, record: TaskRecord, known: Sequence[str]) -> None:
    """End a claimed record whose task name this worker does not know."""
    error = _ending.unknown_task(record.name, known)
    await _ending.finish(runtime, record.id, TaskState.FAILURE, error=error)


def task_name(fn: Callable[..., Any], name: str | None) -> str:
    if name is None:
        name = f"{fn.__module__}.{fn.__qualname__}"
    if not check_name(name):
        raise UsageError(f"a task name must be a str of 1-{MAX_TASK_NAME_LENGTH} characters")
    return name
