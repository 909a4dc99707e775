"""The consumer's front door: ``abortable(task_id)`` makes an :class:`AbortScope`;
``current_scope()`` finds the innermost one around the calling code."""

from __future__ import annotations

from typing import Any

from ._errors import NoCurrentScope
from ._scope import AbortScope, _current_scope


def current_scope() -> AbortScope:
    """The innermost abort scope around the calling code (also in tasks and threads it started).

    :raises NoCurrentScope: when called outside any :func:`abortable` block.
    """
    scope = _current_scope.get()
    if scope is None:
        raise NoCurrentScope(
            "current_scope() was called outside any `async with aioabort.abortable(...)` block"
        )
    return scope


def abortable(
    task_id: str,
    *,
    app: Any = None,
    suppress: bool = False,
    name: str | None = None,
    detached: bool = False,
    time_limit: float | None = None,
    adopt: bool = True,
    labels: dict[str, str] | None = None,
) -> AbortScope:
    """Run a block as the task ``task_id``, stoppable by ``await handle.abort()`` from anywhere.

    ``async with abortable(task_id) as scope:`` reads the task's record and starts it (creating
    it if there is none). When an abort is requested the body is cancelled at its next await,
    and at every await after that until it leaves. On exit the scope records how the body ended
    (SUCCESS, FAILURE or ABORTED) and, if an abort stopped it, raises :class:`TaskAborted`.
    An id aborted before it started raises :class:`TaskAborted` on entry: the body never runs
    (with ``suppress=True``, which never raises, the body runs until its first await and
    stops there).

    :param task_id: the task's id: a non-empty string of at most 200 characters.
    :param app: the :class:`~aioabort.App` to use; by default the open one is found ambiently.
    :param suppress: exit quietly instead of raising :class:`TaskAborted`; read
        ``scope.aborted`` and ``scope.reason`` instead. Then an id aborted before it started
        is entered too, and its body stops at its first await: code before that runs.
    :param name: a name stored on the record (for listings).
    :param detached: do not link this task to the enclosing scope as its child (by default a
        scope entered inside another is its child: aborting the parent aborts it too).
    :param time_limit: abort the task (reason code ``timeout``) after this many seconds.
    :param adopt: start a PENDING record of this id (a queued job, as a worker does). With
        ``adopt=False`` the scope runs only a record of its own making (or stops at once if its
        id was aborted before it started) and refuses a PENDING one with
        :class:`TaskAlreadyExists`: the web middleware's mode ([G11](semantics.md#g11)).
    :param labels: ``{"user": "alice"}``, stored on a record this scope creates (for
        ``app.tasks(labels=...)`` and ``app.abort_many(labels=...)``).
    :raises InvalidTaskId: for a bad id (before anything is written).
    :raises UsageError: for bad labels (before anything is written).
    :raises NoAppOpen: when no App is open.
    :raises TaskAborted: on entry, for an id aborted before it started (unless ``suppress``).
    :raises TaskAlreadyFinished: when the record is already terminal.
    :raises TaskAlreadyStarted: when the task already runs in another scope.
    :raises ScopeAlreadyEntered: when a scope with this id is open in this process.
    :raises TaskAlreadyExists: with ``adopt=False``, when a PENDING record has this id.
    """
    return AbortScope(
        task_id,
        app=app,
        suppress=suppress,
        name=name,
        detached=detached,
        time_limit=time_limit,
        adopt=adopt,
        labels=labels,
    )
