"""Queueing a run: the one place a task's PENDING record is written, by ``Task.apply()``
(and so ``delay()`` and ``spawn()``) and by ``App.send_task()`` with a name alone.

Every option of ``apply()`` is an option of this function, so a producer that queues by name
(a service that never imports the task) has exactly the options of one that holds the task.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _runtime
from ._errors import UsageError
from ._scope import _current_scope
from ._shield import shielded
from ._state import TaskRecord
from ._types import check_labels, check_name, check_task_id, dump_json

if TYPE_CHECKING:
    from ._runner import Task
    from ._runtime import Host

#: The queue tasks go to unless they name another.
DEFAULT_QUEUE = "default"


def check_queue(queue: object) -> str:
    """:raises UsageError: for a queue name that is not a printable str of 1-100 characters."""
    if not isinstance(queue, str) or not 0 < len(queue) <= 100 or not queue.isprintable():
        raise UsageError(f"a queue name must be a printable str of 1-100 characters: {queue!r}")
    return queue


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
) -> TaskRecord:
    """Write the PENDING record of a run of ``name``, for any worker that registered the name
    (with ``spawn``, for the caller to run here: on no queue); every argument is checked
    before anything is written. Returns the record written (or, for an id aborted before it
    was queued, the record found).

    :param task: the registered task, when the caller holds it (its queue, its retry setting,
        and the function ``spawn`` runs); without it the run goes to ``queue`` or the default
        queue, and waits there for a worker that knows ``name``.
    :param task_id: the id (default: a random one).
    :param queue: another queue than the task's own.
    :param detached: do not link it to the enclosing scope as a child.
    :param spawn: on no queue: the caller runs it in this process (a registered task only).
    :param labels: ``{"user": "alice"}``: for ``app.tasks(labels=...)`` and
        ``app.abort_many(labels=...)``.
    :raises TaskAlreadyExists: if ``task_id`` is taken.
    :raises NotJSONSerializable: for arguments that are not JSON.
    :raises UsageError: for bad labels, a bad queue or name, or ``spawn`` without the task.
    """
    check_name(name)
    checked = check_labels(labels)
    if args is not None and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
        raise UsageError(f"args must be a list or tuple of arguments, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise UsageError(f"kwargs must be a dict of arguments, got {type(kwargs).__name__}")
    if spawn and task is None:
        raise UsageError(f"spawn=True runs the task here, but {name!r} is not registered here")
    arguments = {"args": list(args or ()), "kwargs": dict(kwargs or {})}
    args_json = dump_json(arguments, f"arguments of {name!r}")
    task_id = uuid.uuid4().hex if task_id is None else check_task_id(task_id)
    own_queue = DEFAULT_QUEUE if task is None else task.queue
    chosen = None if spawn else check_queue(own_queue if queue is None else queue)
    parent = None if detached else _current_scope.get()
    runtime = _runtime.resolve(host)
    record = await shielded(
        runtime.store.create(
            task_id,
            name=name,
            queue=chosen,
            args_json=args_json,
            parent_id=None if parent is None else parent.id,
            retryable=False if task is None else task.retryable,
            labels=checked,
        )
    )
    return record
