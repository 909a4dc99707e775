"""The aioabort error tree. Every error aioabort raises derives from :class:`AioabortError`.

::

    AioabortError
    ├── UsageError                  the caller did something wrong; nothing was written
    │   ├── InvalidTaskId           empty, oversized, non-string or non-text task id
    │   ├── InvalidReason           bad abort code, message or 'by'
    │   ├── InvalidText             a name, id prefix or message no store could hold
    │   ├── InvalidURL              unknown scheme or unusable store location
    │   ├── MissingDriver           the store's driver is not installed (names the extra)
    │   ├── NotJSONSerializable     arguments or results that are not JSON
    │   ├── InvalidArguments        arguments that do not fit the task's signature
    │   ├── InvalidOption           a queueing option out of its range (countdown, eta, ...)
    │   ├── UnknownTask             a task name that was never registered
    │   ├── NoAppOpen               abortable() / handle() with no App open
    │   ├── AppClosed               using an App that is not open (or already closed)
    │   ├── NoCurrentScope          current_scope() outside any abortable()
    │   ├── ScopeAlreadyEntered     the same task id entered twice in one process
    │   └── BlockingCallInEventLoop a sync (blocking) call made on a running event loop
    ├── TaskStateError              the task's record does not allow the operation
    │   ├── TaskNotFound            no record with that id
    │   ├── TaskAlreadyExists       create() with an id that is taken
    │   ├── TaskAlreadyFinished     the record is in a terminal state
    │   └── TaskAlreadyStarted      another scope, maybe in another process, runs it
    ├── TaskAborted                 outcome: the task was stopped by an abort (.task_id, .reason)
    ├── TaskFailed                  outcome: the task ended FAILURE (.task_id, .error)
    └── StoreError                  the store failed; raised ``from`` the driver's error
        ├── StoreUnavailable        cannot open or reach the store
        └── StoreBusy               the store stayed locked past the retry budget

``InvalidTaskId``, ``InvalidReason``, ``InvalidText``, ``InvalidURL``, ``InvalidOption`` and
``NotJSONSerializable`` are also ``ValueError``; ``InvalidArguments`` is also ``TypeError``;
``TaskNotFound`` and ``UnknownTask`` are also ``LookupError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import AbortReason, ErrorInfo


class AioabortError(Exception):
    """The root of every error aioabort raises."""


class UsageError(AioabortError):
    """The caller used aioabort wrongly; nothing was written."""


class InvalidTaskId(UsageError, ValueError):
    """A task id that is empty, too long, not a string, or not plain text."""


class InvalidReason(UsageError, ValueError):
    """An abort reason with a bad code, message or ``by``."""


class InvalidText(UsageError, ValueError):
    """Text that not every store could hold the same: a task name, a name or id prefix to
    filter by, or a progress message that is not a ``str``, is too long, or holds a NUL or
    an unpaired surrogate."""


class InvalidURL(UsageError, ValueError):
    """A store URL with an unknown scheme or an unusable location."""


class MissingDriver(UsageError, ImportError):
    """The driver for the store's URL scheme is not installed."""


class NotJSONSerializable(UsageError, ValueError):
    """Arguments or a result that cannot be stored as JSON."""


class InvalidArguments(UsageError, TypeError):
    """Arguments that do not fit the task function's signature."""


class InvalidOption(UsageError, ValueError):
    """A queueing option of ``apply()`` out of its range: a negative ``countdown``, a naive
    ``eta``, ``expires`` not after the time the task may start, a bad ``time_limit``."""


class UnknownTask(UsageError, LookupError):
    """No task with this name is registered."""


class NoAppOpen(UsageError):
    """No :class:`aioabort.App` is open in this process or context."""


class AppClosed(UsageError):
    """The :class:`aioabort.App` is not open."""


class NoCurrentScope(UsageError):
    """:func:`aioabort.current_scope` was called outside any abort scope."""


class ScopeAlreadyEntered(UsageError):
    """A scope with this task id is already open in this process."""


class BlockingCallInEventLoop(UsageError):
    """A blocking call of ``aioabort.sync`` made from code that runs on an event loop: it would
    stop that loop until the call is done (and deadlock it if the call needs the loop)."""


class TaskStateError(AioabortError):
    """The task's record does not allow this operation."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskNotFound(TaskStateError, LookupError):
    """No task record has this id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id, f"no task with id {task_id!r}")


class TaskAlreadyExists(TaskStateError):
    """A record with this id already exists."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id, f"a task with id {task_id!r} already exists")


class TaskAlreadyFinished(TaskStateError):
    """The task already ended (SUCCESS, FAILURE or ABORTED); its record never changes."""


class TaskAlreadyStarted(TaskStateError):
    """The task is already running in another scope, maybe in another process."""


class TaskAborted(AioabortError):
    """The task was stopped by an abort.

    :ivar task_id: the task's id.
    :ivar reason: the :class:`~aioabort.AbortReason` recorded first.
    """

    def __init__(self, task_id: str, reason: AbortReason | None) -> None:
        detail = f": {reason}" if reason is not None else ""
        super().__init__(f"task {task_id!r} was aborted{detail}")
        self.task_id = task_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[TaskAborted], tuple[str, AbortReason | None]]:
        return (type(self), (self.task_id, self.reason))


class TaskFailed(AioabortError):
    """The task ended FAILURE.

    :ivar task_id: the task's id.
    :ivar error: the :class:`~aioabort.ErrorInfo` stored on the record.
    """

    def __init__(self, task_id: str, error: ErrorInfo | None) -> None:
        super().__init__(f"task {task_id!r} failed: {error}")
        self.task_id = task_id
        self.error = error

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, ErrorInfo | None]]:
        return (type(self), (self.task_id, self.error))


class StoreError(AioabortError):
    """The store failed. The driver's own error is the ``__cause__``."""


class StoreUnavailable(StoreError):
    """The store cannot be opened or reached."""


class StoreBusy(StoreError):
    """The store stayed locked by another writer past aioabort's retry budget."""
