"""The producer side for sync code: :class:`aioabort.App`'s calls without ``await``."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - see _register below
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Collection, Coroutine, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, final

from .._app import App as AsyncApp
from .._backend import Store
from .._errors import AppClosed
from .._handle import AbortHandle as AsyncHandle
from .._state import TaskRecord, TaskState
from .._types import AbortReason, JSONValue, check_task_id
from . import _loop

logger = logging.getLogger("aioabort.sync")

T = TypeVar("T")

#: Sync Apps still open, closed at the interpreter's exit (before daemon threads stop).
_open: weakref.WeakSet[App] = weakref.WeakSet()


@final
class App:
    """An aioabort App for sync code: Django views, scripts, Celery producers. The same
    names as :class:`aioabort.App`, without ``await``.

    Its async App runs on this process's private event-loop thread (one per process, shared
    by every sync App of it); each call hands its work to that loop and blocks until it is
    done. Any thread may call it at the same time. A child made by ``fork()`` (gunicorn or
    Celery prefork workers) opens its own loop and connections at its first call, never the
    parent's.

    Example::

        with aioabort.sync.App("postgresql://app@db/app") as aborts:
            aborts.handle("report-42").abort(reason="user pressed stop")

    Constructing it does no I/O (a bad URL is refused at once); it opens at its first call
    (or ``with``/:meth:`open`) and stays open until :meth:`close` (or the end of the
    ``with`` block, or the interpreter's exit).

    :param url: as for :class:`aioabort.App`; other keyword arguments are its settings.
    :raises InvalidURL: for a missing or unknown URL (``$AIOABORT_URL`` is read when ``url``
        is not given).
    """

    def __init__(self, url: str | None = None, *, store: Store | None = None, **settings: Any):
        self._make: Callable[[], AsyncApp] = functools.partial(
            AsyncApp, url, store=store, **settings
        )
        self._app = self._make()
        self._pid = os.getpid()
        self._state = "new"
        self._lock = threading.Lock()
        self._opening: asyncio.Future[None] | None = None

    @property
    def url(self) -> str | None:
        """The store's URL (password hidden)."""
        return self._app.url

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state == "closed"

    def __repr__(self) -> str:
        return f"<aioabort.sync.App url={self.url!r} {self._state}>"

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open it now (its first call would otherwise).

        :raises StoreUnavailable: when the store cannot be opened.
        :raises AppClosed: once closed.
        """
        self._async_app("open()")

    def close(self) -> None:
        """Close it (its scopes end, its connections close). Safe to call twice; every call
        after it raises :class:`~aioabort.AppClosed`."""
        _loop.check_not_in_loop("close()")
        with self._lock:
            was, self._state = self._state, "closed"
            _open.discard(self)
            if was == "open" and self._pid == os.getpid():
                _loop.loop_thread().run(self._app.aclose(), "close()")

    def __enter__(self) -> App:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _async_app(self, what: str) -> AsyncApp:
        """The open async App of this process (opened, or made anew in a forked child).

        :raises BlockingCallInEventLoop: when called on an event loop.
        :raises AppClosed: once closed.
        """
        _loop.check_not_in_loop(what)
        if self._state == "open" and self._pid == os.getpid():
            return self._app
        if self._pid != os.getpid():  # a forked child: the parent's App is not ours
            self._forked()
        return _loop.loop_thread().run(self._opened_on_loop(what), what)

    def _opened(self) -> AsyncApp | None:
        """The async App if it is open in this process (no I/O, no check of the caller)."""
        if self._state == "open" and self._pid == os.getpid():
            return self._app
        return None

    async def _opened_on_loop(self, what: str = "a call") -> AsyncApp:
        """The open async App, opened if need be: on the loop thread, where every opener (the
        threads' calls, the Celery bridge's runs) waits for the one opening. Nothing here
        blocks a thread the open itself may need."""
        if self._state == "closed":
            raise AppClosed(f"{self!r}: {what} was called after close()")
        if self._state != "open":
            opening = self._opening
            if opening is None:
                opening = self._opening = asyncio.ensure_future(self._open_here())
            try:
                await asyncio.shield(opening)
            finally:
                if opening.done() and (opening.cancelled() or opening.exception() is not None):
                    self._opening = None  # failed: the next call tries again
        return self._app

    def _forked(self) -> None:
        with _loop.fork_lock():
            if self._pid == os.getpid():
                return
            _loop.inherit(self._app)  # the parent's: kept, never used or closed here
            self._app = self._make()
            self._lock = threading.Lock()
            self._opening = None
            self._pid = os.getpid()
            if self._state == "open":
                self._state = "new"

    async def _open_here(self) -> None:
        app = self._app
        await app.open()
        # Private to the loop thread: code on other loops must not find it ambiently.
        from .. import _runtime

        _runtime.remove_default(app)
        if self._state == "closed":  # closed while it opened
            await app.aclose()
            raise AppClosed(f"{self!r} was closed while it opened")
        self._state = "open"
        _open.add(self)

    def _call(self, what: str, make: Callable[[AsyncApp], Coroutine[Any, Any, T]]) -> T:
        app = self._async_app(what)
        return _loop.loop_thread().run(make(app), what)

    # -- the producer API --------------------------------------------------------------------

    def handle(self, task_id: str) -> AbortHandle:
        """A handle on ``task_id`` (no I/O). :raises InvalidTaskId: for a bad id."""
        return AbortHandle(self, check_task_id(task_id))

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AbortHandle:
        """Queue a run of the task ``name`` for any worker that knows it, without importing
        it: :meth:`aioabort.App.send_task`.

        :raises NotJSONSerializable: for arguments that are not JSON (nothing is written).
        """
        done = self._call("send_task()", lambda app: app.send_task(name, args, kwargs, **options))
        return AbortHandle(self, done.id)

    def tasks(
        self,
        *,
        states: Collection[TaskState | str] | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        labels: dict[str, str] | None = None,
        id_prefix: str | None = None,
        key: str | None = None,
    ) -> list[TaskRecord]:
        """Task records, newest first: :meth:`aioabort.App.tasks`."""
        return self._call(
            "tasks()",
            lambda app: app.tasks(
                states=states,
                name=name,
                limit=limit,
                offset=offset,
                labels=labels,
                id_prefix=id_prefix,
                key=key,
            ),
        )

    def abort_many(
        self,
        *,
        reason: str | AbortReason | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        states: Collection[TaskState | str] | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Abort every task that matches the filter: :meth:`aioabort.App.abort_many`."""
        return self._call(
            "abort_many()",
            lambda app: app.abort_many(
                reason=reason, labels=labels, name=name, states=states, dry_run=dry_run
            ),
        )

    def purge(self, *, older_than: timedelta) -> int:
        """Delete finished records that ended more than ``older_than`` ago:
        :meth:`aioabort.App.purge`."""
        return self._call("purge()", lambda app: app.purge(older_than=older_than))


@final
class AbortHandle:
    """A handle on one task id, for sync code: :class:`aioabort.AbortHandle`'s calls without
    ``await``. Get one with :meth:`App.handle`; holding it does no I/O."""

    __slots__ = ("_app", "id")

    def __init__(self, app: App, task_id: str) -> None:
        self._app = app
        self.id = task_id

    def __repr__(self) -> str:
        return f"<aioabort.sync.AbortHandle id={self.id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbortHandle) and (other.id, other._app) == (self.id, self._app)

    def __hash__(self) -> int:
        return hash(self.id)

    def _call(
        self, what: str, make: Callable[[AsyncHandle[JSONValue]], Coroutine[Any, Any, T]]
    ) -> T:
        return self._app._call(what, lambda app: make(app.handle(self.id)))

    def abort(
        self,
        reason: str | AbortReason | None = None,
        *,
        by: str | None = None,
        create: bool = False,
    ) -> bool:
        """Ask the task to stop: :meth:`aioabort.AbortHandle.abort`. Returns whether this
        call recorded a new abort request."""
        return self._call("abort()", lambda h: h.abort(reason, by=by, create=create))

    def state(self) -> TaskState:
        """The task's state. :raises TaskNotFound: if there is no record."""
        return self._call("state()", lambda h: h.state())

    def is_aborted(self) -> bool:
        """True once an abort was requested (False for an id with no record)."""
        return self._call("is_aborted()", lambda h: h.is_aborted())

    def record(self) -> TaskRecord:
        """The task's record. :raises TaskNotFound: if there is none."""
        return self._call("record()", lambda h: h.record())

    def wait(self, timeout: float | None = None) -> TaskRecord:
        """Block until the task has really stopped; its record.

        :raises TimeoutError: if ``timeout`` seconds pass first.
        """
        return self._call("wait()", lambda h: h.wait(timeout))

    def result(self, timeout: float | None = None) -> JSONValue:
        """Block until the task ends; its stored result.

        :raises TaskAborted: if it ended ABORTED; :raises TaskFailed: if it ended FAILURE.
        :raises TimeoutError: if ``timeout`` seconds pass first.
        """
        return self._call("result()", lambda h: h.result(timeout))


def _close_at_exit() -> None:
    for app in list(_open):
        try:
            app.close()
        except Exception:
            logger.warning("closing %r at exit failed", app, exc_info=True)


# Closing a store uses its loop's executor: close before concurrent.futures stops executors
# at exit. Its hook is registered when concurrent.futures.thread is imported (here, first),
# and the hooks run in reverse order.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_close_at_exit)
