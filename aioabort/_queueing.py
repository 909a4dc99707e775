"""Queueing a run: the one place a task's PENDING record is written — by ``Task.apply()`` (and
so ``delay()`` and ``spawn()``) and by ``App.send_task()`` with a name alone — and the options a
call may give (``countdown``, ``eta``, ``expires``, ``time_limit``, ``key``, ``supersede``) with
their checks.

Every option of ``apply()`` is an option of :func:`queue_task`, so a producer that queues by name
(a service that never imports the task) has exactly the options of one that holds the task, each
option means the same wherever it is given, and bad input is refused at the call before
anything is written.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import _runtime
from ._errors import InvalidOption, UsageError
from ._scope import _current_scope
from ._settings import check_time_limit
from ._shield import shielded
from ._state import TaskRecord
from ._types import check_key, check_labels, check_name, check_task_id, dump_json, utcnow

if TYPE_CHECKING:
    from ._runner import Task
    from ._runtime import Host, Runtime

#: The queue tasks go to unless they name another.
DEFAULT_QUEUE = "default"

#: The furthest ahead a task may be put off or expire, in seconds (about ten years).
MAX_DELAY = 10 * 365 * 86400.0


def check_queue(queue: object) -> str:
    """:raises UsageError: for a queue name that is not a printable str of 1-100 characters."""
    if not isinstance(queue, str) or not 0 < len(queue) <= 100 or not queue.isprintable():
        raise UsageError(f"a queue name must be a printable str of 1-100 characters: {queue!r}")
    return queue


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """A call's checked options, as the record stores them.

    :ivar not_before: no worker claims the task before this time (``countdown``/``eta``).
    :ivar expires_at: still queued then, the task ends ABORTED (code ``expired``).
    :ivar time_limit: seconds for this run, over the task's own.
    :ivar key: the task's key, for ``app.tasks(key=...)`` and ``supersede``.
    :ivar supersede: abort the key's unfinished earlier tasks in the transaction that queues
        this one (code ``superseded``).
    """

    not_before: datetime | None = None
    expires_at: datetime | None = None
    time_limit: float | None = None
    key: str | None = None
    supersede: bool = False


def _seconds(value: object, what: str) -> float:
    """``value`` (seconds or a ``timedelta``) as non-negative seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidOption(f"{what} must be seconds or a timedelta, got {value!r}")
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DELAY):
        raise InvalidOption(f"{what} must be between 0 and {MAX_DELAY:.0f} seconds, got {value!r}")
    return seconds


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidOption(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidOption(
            f"{what} must be an aware datetime (with a time zone), got the naive {value!r}"
        )
    return value


def _times(
    countdown: float | timedelta | None,
    eta: datetime | None,
    expires: float | timedelta | datetime | None,
    now: datetime,
) -> tuple[datetime | None, datetime | None]:
    """``not_before`` and ``expires_at`` from a call's options (see :func:`queue_options`)."""
    if countdown is not None and eta is not None:
        raise InvalidOption("give countdown or eta, not both")
    not_before = None
    if countdown is not None:
        not_before = now + timedelta(seconds=_seconds(countdown, "countdown"))
    elif eta is not None:
        not_before = _aware(eta, "eta")
        if abs((not_before - now).total_seconds()) > MAX_DELAY:
            raise InvalidOption(f"eta must be within {MAX_DELAY:.0f} seconds of now: {eta!r}")
    expires_at = None
    if isinstance(expires, datetime):
        expires_at = _aware(expires, "expires")
    elif expires is not None:
        expires_at = now + timedelta(seconds=_seconds(expires, "expires"))
    if expires_at is not None:
        start = now if not_before is None or not_before < now else not_before
        if expires_at <= start:
            raise InvalidOption(
                f"expires ({expires_at.isoformat()}) must come after the time the task may "
                f"start ({start.isoformat()})"
            )
        if (expires_at - now).total_seconds() > MAX_DELAY:
            raise InvalidOption(f"expires must be within {MAX_DELAY:.0f} seconds of now")
    return not_before, expires_at


def queue_options(
    countdown: float | timedelta | None = None,
    eta: datetime | None = None,
    expires: float | timedelta | datetime | None = None,
    time_limit: float | None = None,
    key: str | None = None,
    supersede: bool = False,
    *,
    spawn: bool = False,
    now: datetime | None = None,
) -> QueueOptions:
    """Check a call's options and turn them into times.

    :param countdown: seconds (or a ``timedelta``) from now before a worker may start it.
    :param eta: the aware datetime before which no worker starts it (not with ``countdown``).
    :param expires: seconds or a ``timedelta`` from now, or an aware datetime: still queued
        then, it ends ABORTED (code ``expired``) and never runs. It must come after the time
        the task may start.
    :param time_limit: seconds for this run, over the task's own.
    :param key: a short printable text (``"report:alice"``) the task is known by.
    :param supersede: with ``key``: the key's unfinished earlier tasks are aborted (code
        ``superseded``, the reason naming the new task) when this one is queued.
    :param spawn: the run starts now in this process (no time options then).
    :raises InvalidOption: for any option out of its range (nothing is written).
    """
    if spawn and (countdown, eta, expires) != (None, None, None):
        raise InvalidOption(
            "spawn=True runs the task now: countdown, eta and expires are for queued tasks"
        )
    not_before, expires_at = _times(countdown, eta, expires, utcnow() if now is None else now)
    try:
        limit = check_time_limit(time_limit)
    except UsageError as exc:  # the same check as @app.task's, raised as this call's error
        raise InvalidOption(str(exc)) from None
    if not isinstance(supersede, bool):
        raise InvalidOption(f"supersede must be True or False, got {supersede!r}")
    if supersede and key is None:
        raise InvalidOption("supersede=True needs a key: the tasks it replaces are the key's")
    return QueueOptions(
        not_before, expires_at, limit, None if key is None else check_key(key), supersede
    )


async def enqueue(
    runtime: Runtime,
    task_id: str,
    *,
    name: str,
    queue: str | None,
    args_json: str,
    parent_id: str | None,
    retryable: bool,
    labels: Mapping[str, str],
    options: QueueOptions,
) -> TaskRecord:
    """Write the PENDING record of a run (``queue=None``: one this process runs at once).

    :raises TaskAlreadyExists: if ``task_id`` is taken.
    """
    return await shielded(
        runtime.store.create(
            task_id,
            name=name,
            queue=queue,
            args_json=args_json,
            parent_id=parent_id,
            retryable=retryable,
            labels=labels,
            not_before=options.not_before,
            expires_at=options.expires_at,
            time_limit=options.time_limit,
            key=options.key,
            supersede=options.supersede,
        )
    )


def _arguments_json(name: str, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> str:
    """The stored JSON of a run's arguments; raises for arguments that are not a list and a
    dict of JSON values."""
    if args is not None and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
        raise UsageError(f"args must be a list or tuple of arguments, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise UsageError(f"kwargs must be a dict of arguments, got {type(kwargs).__name__}")
    arguments = {"args": list(args or ()), "kwargs": dict(kwargs or {})}
    return dump_json(arguments, f"arguments of {name!r}")


async def queue_task(
    host: Host,
    name: str,
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    *,
    task: Task[Any, Any] | None = None,
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
) -> TaskRecord:
    """Write the PENDING record of a run of ``name``, for any worker that registered the name
    (with ``spawn``, for the caller to run here: on no queue); every argument is checked
    before anything is written. Returns the record written (or, for an id aborted before it
    was queued, the record found). The options are :meth:`Task.apply`'s (the time ones:
    :func:`queue_options`).

    :param task: the registered task, when the caller holds it (its queue, its retry setting,
        and the function ``spawn`` runs); without it the run goes to ``queue`` or the default
        queue, and waits there for a worker that knows ``name``.

    :raises TaskAlreadyExists: if ``task_id`` is taken.
    :raises NotJSONSerializable: for arguments that are not JSON.
    :raises UsageError: for bad labels, options, a bad queue or name, or ``spawn`` without
        the task (``InvalidOption`` for the options).
    """
    check_name(name)
    checked = check_labels(labels)
    checked_options = queue_options(
        countdown, eta, expires, time_limit, key, supersede, spawn=spawn
    )
    if spawn and task is None:
        raise UsageError(f"spawn=True runs the task here, but {name!r} is not registered here")
    args_json = _arguments_json(name, args, kwargs)
    task_id = uuid.uuid4().hex if task_id is None else check_task_id(task_id)
    own_queue = DEFAULT_QUEUE if task is None else task.queue
    parent = None if detached else _current_scope.get()
    return await enqueue(
        _runtime.resolve(host),
        task_id,
        name=name,
        queue=None if spawn else check_queue(own_queue if queue is None else queue),
        args_json=args_json,
        parent_id=None if parent is None else parent.id,
        retryable=False if task is None else task.retryable,
        labels=checked,
        options=checked_options,
    )
