"""The App: one store, one watcher and one heartbeat per process; the front door for users."""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final, overload

import anyio

from . import _runtime
from ._aborting import abort_matching
from ._backend import OwnerInfo, Store, Unclaimed
from ._errors import InvalidURL, UsageError
from ._handle import AbortHandle
from ._lifecycle import choose_store, close_parts, open_parts
from ._liveness import Liveness
from ._queueing import DEFAULT_QUEUE, queue_task
from ._redo import Redo
from ._runner import Task
from ._settings import AppSettings, notifier_url
from ._shield import shielded
from ._state import (
    IGNORED_ABORT_AFTER,
    TaskRecord,
    TaskState,
    check_states,
    listing_filters,
)
from ._types import (
    AbortReason,
    check_labels,
    check_name,
    check_task_id,
    coerce_reason,
)
from ._watcher import Watcher

logger = logging.getLogger("aioabort")

P = ParamSpec("P")
R = TypeVar("R")


#: Tasks a bulk abort reads, and aborts, at a time.
ABORT_BATCH = 500


@final
class App:
    """An aioabort application: the store every process shares, and this process's watcher.

    Constructing an App does no I/O (it only checks the URL and loads the store's driver); open
    it with ``async with app:`` or ``await app.open()``. The first App opened in a process is
    also found ambiently by :func:`abortable` and :func:`current_scope`.

    Example::

        app = aioabort.App("sqlite:///aioabort.db")
        async with app:
            async with aioabort.abortable("job-1"):
                await work()

    :param url: ``sqlite:///path.db`` (a file, created on first use; ``sqlite:////abs/path.db``
        for an absolute path) or ``postgresql://user@host/db``. Without one, the App reads
        ``$AIOABORT_URL`` each time it opens. Other schemes come from
        :func:`aioabort.backends.register_scheme` (``memory://name``: a
        :class:`~aioabort.testing.MemoryStore` shared by the Apps of this process that name it).
    :param store: a :class:`~aioabort.Store` instance to use instead of a URL, e.g.
        ``App(store=aioabort.testing.MemoryStore())`` in an application's tests.
    :param heartbeat_interval: seconds between this process's heartbeats (one write each).
    :param stale_after: seconds without a heartbeat after which another process ends this
        process's running tasks as FAILURE (cause ``lost``).
    :param shutdown_grace: on close, seconds open scopes get to finish after being aborted
        with code ``shutdown``.
    :param poll_interval: seconds between the watcher's polls; by default 0.005 on SQLite
        (``PRAGMA data_version``) and 5.0 on PostgreSQL (the safety net behind NOTIFY).
    :param retention: finished records older than this are purged (by the fleet's reaper,
        once a minute, in batches; never a running one); ``None`` (the default) keeps all.
    :param ignored_abort_after: seconds after an abort reached a running scope after which a
        task still running is shown as ignoring its abort (a warning in the log; the CLI, the
        router and the dashboard say so; [G16](semantics.md#g16)).
    :param notifier: ``redis://...`` or ``nats://...``: push beside the store ([how](notifiers.md)).
    :raises InvalidURL: for a missing or unknown URL (store or notifier).
    :raises MissingDriver: when the URL's driver is not installed.
    :raises UsageError: for both a URL and a store, or bad settings.
    """

    _state = "new"

    def __init__(
        self,
        url: str | None = None,
        *,
        store: Store | None = None,
        heartbeat_interval: float = 5.0,
        stale_after: float = 30.0,
        shutdown_grace: float = 5.0,
        poll_interval: float | None = None,
        ignored_abort_after: float = IGNORED_ABORT_AFTER,
        retention: timedelta | None = None,
        notifier: str | None = None,
    ) -> None:
        self._url_from_env = url is None and store is None
        #: The App's settings, checked (:class:`AppSettings`).
        self.settings = settings = AppSettings(
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            shutdown_grace=shutdown_grace,
            poll_interval=poll_interval,
            ignored_abort_after=ignored_abort_after,
            retention=retention,
            notifier=notifier_url(notifier),
        )
        self._make_store, self.url = choose_store(url, store, poll_interval)
        self.poll_interval = settings.poll_interval
        self.heartbeat_interval = settings.heartbeat_interval
        self.stale_after = settings.stale_after
        self.shutdown_grace = settings.shutdown_grace
        self.ignored_abort_after = settings.ignored_abort_after
        self.retention = settings.retention
        self._parts: _runtime.Runtime | None = None
        self._owner: OwnerInfo | None = None
        self._tokens: list[object] = []
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._liveness: Liveness | None = None
        self._background: set[asyncio.Task[object]] = set()

    def __repr__(self) -> str:
        return f"<aioabort.App url={self.url!r} {self._state}>"

    # -- the open App's parts ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the App is open."""
        return self._state == "open"

    @property
    def runtime(self) -> _runtime.Runtime:
        """The open App's parts (store, watcher, owner...), for integrations such as the
        worker, the web and the CLI.

        :raises AppClosed: when the App is not open.
        """
        if self._parts is None or not self.is_open:
            raise _runtime.not_open(self)
        return self._parts

    @property
    def store(self) -> Store:
        """The store (:raises AppClosed: when the App is not open)."""
        return self.runtime.store

    @property
    def watcher(self) -> Watcher:
        """This process's watcher (see :meth:`Watcher.statistics`)."""
        return self.runtime.watcher

    @property
    def redo(self) -> Redo:
        """Writes of this process's records that failed and are being retried."""
        return self.runtime.redo

    @property
    def owner(self) -> str:
        """This process's owner id, stored on the tasks it runs."""
        return self.runtime.owner

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store (creating its schema), start the watcher and the heartbeat.

        :raises StoreUnavailable: when the store cannot be opened.
        """
        _runtime.require_asyncio("App.open()")
        if self._state in ("open", "opening"):
            raise UsageError(f"{self!r} is already {self._state}")
        if self._url_from_env:  # AIOABORT_URL as it is now
            self._make_store, self.url = choose_store(None, None, None)
        make_store = self._make_store
        if make_store is None:
            raise InvalidURL(
                "no store URL: pass one, e.g. App('sqlite:///aioabort.db'), or set AIOABORT_URL"
            )
        self._state = "opening"
        try:
            parts, self._owner, self._liveness = await open_parts(
                make_store(self.poll_interval), self.settings, self._start_background
            )
        except BaseException:
            self._state = "new"
            raise
        self._parts, self._state = parts, "open"
        _runtime.add_default(self)
        logger.debug("app opened", extra={"action": "app_opened", "url": self.url})

    async def aclose(self) -> None:
        """Abort scopes still open (code ``shutdown``), let them finish for ``shutdown_grace``
        seconds, then stop the watcher and close the store. Safe to call twice.

        Closing never stops half way: when the store fails, each step is still taken (the
        open scopes are stopped all the same, the heartbeat ends, the store is closed) and the
        failure is logged; tasks whose end could not be recorded are reaped by another App.
        """
        if self._state != "open":
            return
        with anyio.CancelScope(shield=True):
            self._state = "closing"
            _runtime.remove_default(self)
            parts, owner, liveness = self._parts, self._owner, self._liveness
            assert parts is not None and owner is not None and liveness is not None
            try:
                await close_parts(parts, owner, liveness, self._background, self.shutdown_grace)
            finally:
                self._state = "closed"

    def _start_background(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        if not self.is_open:
            coro.close()
            raise _runtime.not_open(self)
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- tasks -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        time_limit: float | None = None,
        retryable: bool = False,
        retry_on: type[Exception] | tuple[type[Exception], ...] | None = None,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        abort_grace: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        time_limit: float | None = None,
        retryable: bool = False,
        retry_on: type[Exception] | tuple[type[Exception], ...] | None = None,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        abort_grace: float | None = None,
    ) -> Any:
        """Register an ``async def`` function as a task: ``@app.task`` or
        ``@app.task(name=..., queue=..., time_limit=..., retryable=...)``.

        :param name: the name workers know it by (default ``module.qualname``).
        :param queue: the queue ``delay()`` puts it on.
        :param time_limit: abort a run after this many seconds (reason code ``timeout``).
        :param retryable: a run cut off by a worker's shutdown, or by a worker that died,
            goes back to PENDING instead of ending.
        :param retry_on: exception classes a queued run is retried on: the same record goes
            back to the queue up to ``max_retries`` times, the first retry ``retry_backoff``
            seconds later, each later one twice as long. An abort is never retried.
        :param abort_grace: seconds a run may go on after its abort reached it before it is
            marked as ignoring it (default: the App's ``ignored_abort_after``).
        :raises UsageError: for a function that is not ``async def``, a name taken, or a bad
            setting; ``TypeError`` for an unknown one.
        """
        settings: dict[str, Any] = {"retry_on": retry_on, "abort_grace": abort_grace}
        settings.update(retryable=retryable, max_retries=max_retries, retry_backoff=retry_backoff)

        def register(func: Callable[..., Awaitable[Any]]) -> Task[Any, Any]:
            task = Task.of(self, func, name=name, queue=queue, time_limit=time_limit, **settings)
            if task.name in self._tasks:
                raise UsageError(f"a task named {task.name!r} is already registered")
            self._tasks[task.name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    @property
    def registry(self) -> dict[str, Task[Any, Any]]:
        """The task functions registered with ``@app.task``, by name (a copy).

        (``app.task`` registers one; ``await app.tasks()`` lists task *records*.)
        """
        return dict(self._tasks)

    async def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AbortHandle:
        """Queue a run of ``name`` without importing the task (:meth:`Task.apply`'s options).
        A name not registered here waits on its queue (``queue=``, default ``default``) for a
        worker that knows it (``aioabort tasks --unclaimed`` lists what waits).

        :raises NotJSONSerializable: for arguments that are not JSON (nothing is written).
        """
        task = self._tasks.get(name)
        if task is not None:
            return await task.apply(args or (), kwargs, **options)
        return AbortHandle(self, (await queue_task(self, name, args, kwargs, **options)).id)

    @asynccontextmanager
    async def lifespan(self, asgi_app: object = None) -> AsyncIterator[dict[str, Any]]:
        """An ASGI lifespan: ``FastAPI(lifespan=aborts.lifespan)`` (Starlette likewise).

        Opens the App (its watcher and heartbeat) in each server process and closes it at
        shutdown; the lifespan state holds it as ``request.state.aborts``. If the App is
        already open it is left open. Combine with a lifespan of your own with
        :func:`aioabort.web.combine_lifespans`.
        """
        opened = not self.is_open
        if opened:
            await self.open()
        try:
            yield {"aborts": self}
        finally:
            if opened:
                await self.aclose()

    async def __aenter__(self) -> App:
        await self.open()
        self._tokens.append(_runtime.set_current(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            _runtime.reset_current(self._tokens.pop())  # type: ignore[arg-type]
        await self.aclose()

    def __del__(self) -> None:
        if self._state == "open":
            warnings.warn(
                f"{self!r} was never closed: use `async with app:` or `await app.aclose()`",
                ResourceWarning,
                stacklevel=1,
            )

    # -- producer API ------------------------------------------------------------------------

    def handle(self, task_id: str) -> AbortHandle:
        """A handle on ``task_id`` (no I/O). :raises InvalidTaskId: for a bad id."""
        return AbortHandle(self, task_id)

    async def create(self, task_id: str | None = None, *, name: str | None = None) -> AbortHandle:
        """Record a new PENDING task (e.g. before handing it to a background job).

        An abort before the task starts ends it ABORTED at once; the scope that later enters it
        is cancelled at its first await.

        :param task_id: the id; a random one by default.
        :raises TaskAlreadyExists: if the id is taken (nothing is written).
        :raises InvalidText: for a name that is not text every store holds (nothing is
            written; creates committed together with this one are not affected).
        """
        task_id = uuid.uuid4().hex if task_id is None else check_task_id(task_id)
        if name is not None:
            check_name(name)
        await shielded(self.store.create(task_id, name=name))
        return AbortHandle(self, task_id)

    async def tasks(
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
        """Task records, newest first, optionally filtered by state, name, labels (every
        given label must match), the start of their id (``id_prefix``: what a search box
        finds) and the ``key`` they were queued with.

        :raises UsageError: for bad states, labels, key, limit or offset.
        :raises InvalidText: for a ``name`` or ``id_prefix`` that is not text every store
            holds (a NUL, a lone surrogate, too long).
        """
        return await self.store.list_tasks(
            **listing_filters(states, name, limit, offset, labels, id_prefix, key)
        )

    async def abort_many(
        self,
        *,
        reason: str | AbortReason | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        states: Collection[TaskState | str] | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Abort every task that matches the filter, each as :meth:`AbortHandle.abort` would
        (the first reason wins, children are aborted too, a queued task never runs), in
        batches of :data:`ABORT_BATCH`: no giant transaction, no timeout, however many match.

        :param labels: every given label must match.
        :param states: by default PENDING and STARTED (an ABORTING task has its request).
        :param dry_run: change nothing: return the ids that would be aborted.
        :returns: the ids this call aborted (with ``dry_run``: that it would abort), in id
            order: they are read page after page by id, so tasks that end meanwhile shift no
            page and every task that matched throughout the call is found.
        :raises UsageError: for a filter with neither labels nor a name (it would match the
            whole store: pass ``states=`` alone to mean it), or bad labels or states.
        """
        wanted_labels = check_labels(labels)
        if not wanted_labels and name is None and states is None:
            raise UsageError(
                "abort_many() needs a filter: labels=, name= or (to mean every task) states="
            )
        abort_reason = coerce_reason(reason, None)
        chosen = check_states(["PENDING", "STARTED"] if states is None else states)
        chosen = chosen or list(TaskState)  # as in tasks(): no state given means every state
        name = None if name is None else check_name(name)
        return await abort_matching(
            self.runtime,
            states=[state for state in chosen if not state.is_terminal],
            name=name,
            labels=wanted_labels,
            reason=abort_reason,
            dry_run=dry_run,
            batch=ABORT_BATCH,
        )

    async def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (every state is present, zero or more)."""
        found = await self.store.count_tasks()
        return {state: found.get(state, 0) for state in TaskState}

    async def unclaimed(self, *, queued_for: timedelta = timedelta(minutes=1)) -> list[Unclaimed]:
        """Tasks nobody can run: queued longer than ``queued_for`` on a queue where no live
        worker (one heard from within ``stale_after``) registered their name, grouped by queue
        and name, oldest first. Workers claim only the names they registered
        ([G14](semantics.md#g14)): these wait for a worker that knows them, such as a newer
        version's.

        :raises UsageError: when ``queued_for`` is not a non-negative timedelta.
        """
        if not isinstance(queued_for, timedelta) or queued_for.total_seconds() < 0:
            raise UsageError(f"queued_for must be a non-negative timedelta, got {queued_for!r}")
        return await self.store.unclaimed(
            queued_for=queued_for.total_seconds(), quiet=self.stale_after
        )

    async def purge(self, *, older_than: timedelta) -> int:
        """Delete finished records (SUCCESS, FAILURE, ABORTED) that ended ``older_than``
        ago or earlier (``timedelta(0)``: every finished one), with their abort-log rows, in batches; never a running or queued
        one. Returns how many were deleted.

        :raises UsageError: when ``older_than`` is not a non-negative timedelta.
        """
        if not isinstance(older_than, timedelta) or older_than.total_seconds() < 0:
            raise UsageError(f"older_than must be a non-negative timedelta, got {older_than!r}")
        if self._liveness is None or not self.is_open:
            raise _runtime.not_open(self)
        return await self._liveness.purge(older_than.total_seconds())

    async def reap(self) -> list[str]:
        """End now, as FAILURE (cause ``lost``), running tasks whose owner stopped heartbeating.

        Runs by itself every ``heartbeat_interval``; call it to reap at once.
        """
        if self._liveness is None or not self.is_open:
            raise _runtime.not_open(self)
        return await self._liveness.reap()
