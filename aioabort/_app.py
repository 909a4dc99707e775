"""The App: one store, one watcher and one heartbeat per process; the front door for users."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final, overload

import anyio

from . import _runtime
from ._aborting import record_and_deliver_many, stop_here
from ._backend import OwnerInfo, Store, Unclaimed
from ._errors import AioabortError, InvalidURL, UnknownTask, UsageError
from ._handle import AbortHandle
from ._liveness import Liveness
from ._redo import Redo
from ._runner import DEFAULT_QUEUE, Task, _check_queue, task_name
from ._shield import shielded
from ._state import IGNORED_ABORT_AFTER, TaskRecord, TaskState
from ._types import (
    MAX_OFFSET,
    MAX_TASK_ID_LENGTH,
    AbortReason,
    check_labels,
    check_name,
    check_task_id,
    check_text,
    coerce_reason,
)
from ._watcher import Watcher
from .backends import redact, store_factory

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
    :raises InvalidURL: for a missing or unknown URL.
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
    ) -> None:
        # Without a URL the App reads AIOABORT_URL each time it opens, so a module-level
        # ``app = aioabort.App()`` follows the environment (``aioabort --db URL worker ...``).
        self._url_from_env = url is None and store is None
        if not heartbeat_interval > 0:
            raise UsageError(f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
        if not stale_after > heartbeat_interval:
            raise UsageError(
                f"stale_after ({stale_after!r}) must be longer than heartbeat_interval "
                f"({heartbeat_interval!r})"
            )
        if retention is not None and (
            not isinstance(retention, timedelta) or retention.total_seconds() <= 0
        ):
            raise UsageError(f"retention must be a positive timedelta or None, got {retention!r}")
        if not ignored_abort_after > 0:
            raise UsageError(
                f"ignored_abort_after must be positive seconds, got {ignored_abort_after!r}"
            )
        if poll_interval is not None and not 0 < poll_interval <= 60:
            raise UsageError(f"poll_interval must be within (0, 60] seconds, got {poll_interval!r}")
        self._make_store: Callable[[float | None], Store] | None = None
        self.url: str = "$AIOABORT_URL"
        if store is not None:
            if url is not None:
                raise UsageError("pass either a URL or store=, not both")
            if not isinstance(store, Store):
                raise UsageError(f"store= must be an aioabort.Store, got {type(store).__name__}")
            if poll_interval is not None:
                raise UsageError("with store=, set the poll interval on the store itself")
            self._make_store = lambda _poll_interval: store
            self.url = store.display_url
        elif url is not None:
            self._make_store = store_factory(url)
            self.url = redact(url)
        elif os.environ.get("AIOABORT_URL"):
            self._make_store = store_factory(os.environ["AIOABORT_URL"])
            self.url = redact(os.environ["AIOABORT_URL"])
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.shutdown_grace = shutdown_grace
        self.ignored_abort_after = ignored_abort_after
        self.retention = retention
        self._parts: _runtime.Runtime | None = None
        self._owner: OwnerInfo | None = None
        self._tokens: list[object] = []
        self._state = "new"
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._liveness: Liveness | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._redo = Redo()

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
        return self._redo

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
        if self._state == "open":
            raise UsageError(f"{self!r} is already open")
        if self._state == "opening":
            raise UsageError(f"{self!r} is being opened")
        make_store = self._make_store
        if self._url_from_env:
            env_url = os.environ.get("AIOABORT_URL")
            if not env_url:
                raise InvalidURL(
                    "no store URL: pass one, e.g. App('sqlite:///aioabort.db'), or set AIOABORT_URL"
                )
            make_store = store_factory(env_url)
            self._make_store, self.url = make_store, redact(env_url)
        assert make_store is not None
        self._state = "opening"
        store = make_store(self.poll_interval)
        try:
            await store.open()
            owner = OwnerInfo(uuid.uuid4().hex, socket.gethostname(), os.getpid())
            await store.heartbeat(owner)
            watcher = Watcher(store)
            await watcher.start()
        except BaseException:
            self._state = "new"
            with anyio.CancelScope(shield=True):
                await store.aclose()
            raise
        self._owner, self._redo = owner, Redo()
        self._parts = _runtime.Runtime(
            store=store,
            watcher=watcher,
            owner=owner.id,
            redo=self._redo,
            ignored_abort_after=self.ignored_abort_after,
            spawn=self._start_background,
            served=_runtime.ServedQueues(),
        )
        # The first cancel scope in a process loads anyio's asyncio backend (tens of ms): do it
        # now so the first abort is not slow.
        with anyio.CancelScope() as warm:  # noqa: ASYNC100 - entering it is the point
            warm.cancel()
        self._liveness = Liveness(
            store,
            owner,
            interval=self.heartbeat_interval,
            stale_after=self.stale_after,
            retention=None if self.retention is None else self.retention.total_seconds(),
        )
        self._liveness.start()
        self._state = "open"
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
            parts, owner = self._parts, self._owner
            assert parts is not None and owner is not None
            store, watcher = parts.store, parts.watcher
            try:
                await self._abort_open_scopes(parts)
                await self._stop_background()
            finally:
                try:
                    await self._stop_heartbeat()
                    watcher.stop()
                    await self._release(store, owner)
                finally:
                    self._state = "closed"
                    await store.aclose()

    async def _stop_heartbeat(self) -> None:
        if self._liveness is not None:
            await self._liveness.stop()

    async def _release(self, store: Store, owner: OwnerInfo) -> None:
        unsent = await self._redo.aclose()
        if unsent:
            logger.warning(
                "the ends of some tasks could not be recorded before the App closed",
                extra={"action": "ends_unsent", "task_ids": unsent},
            )
        try:
            lost = await store.release_owner(owner.id)
        except AioabortError as exc:
            # Closing must not fail on bookkeeping: another App reaps this owner later.
            logger.warning(
                "could not release this process's tasks while closing",
                extra={"action": "release_failed", "error": str(exc)},
            )
            return
        if lost:
            logger.warning(
                "tasks still running when the App closed were ended as lost",
                extra={"action": "tasks_lost", "task_ids": lost},
            )

    async def _abort_open_scopes(self, parts: _runtime.Runtime) -> None:
        watcher = parts.watcher
        scopes = watcher.scopes()
        if not scopes:
            return
        reason = AbortReason(AbortReason.SHUTDOWN, "the aioabort App is closing")
        for scope in scopes:
            await stop_here(parts, scope.id, reason)
        with anyio.move_on_after(self.shutdown_grace):
            await watcher.wait_idle()

    async def _stop_background(self) -> None:
        """Spawned tasks that never entered their scope (or outlived the grace) are cancelled;
        their records end as the scope records them, or are reaped as lost."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

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
    ) -> Any:
        """Register an ``async def`` function as a task: ``@app.task`` or
        ``@app.task(name=..., queue=..., time_limit=..., retryable=...)``.

        :param name: the name workers know it by (default ``module.qualname``).
        :param queue: the queue ``delay()`` puts it on.
        :param time_limit: abort a run after this many seconds (reason code ``timeout``).
        :param retryable: a run cut off by a worker's shutdown, or by a worker that died,
            goes back to PENDING instead of ending.
        :raises UsageError: for a function that is not ``async def``, or a name taken.
        """

        def register(func: Callable[..., Awaitable[Any]]) -> Task[Any, Any]:
            if not inspect.iscoroutinefunction(func):
                raise UsageError(
                    f"{getattr(func, '__qualname__', func)!r} is not an async def function; "
                    "aioabort tasks are coroutines"
                )
            registered = task_name(func, name)
            if registered in self._tasks:
                raise UsageError(f"a task named {registered!r} is already registered")
            if time_limit is not None and not (
                isinstance(time_limit, int | float)
                and not isinstance(time_limit, bool)
                and 0 < time_limit < 10**7
            ):
                raise UsageError(f"time_limit must be a positive number of seconds: {time_limit!r}")
            task: Task[Any, Any] = Task(
                self,
                func,
                name=registered,
                queue=_check_queue(queue),
                time_limit=time_limit,
                retryable=bool(retryable),
            )
            self._tasks[registered] = task
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

    @property
    def registered_tasks(self) -> dict[str, Task[Any, Any]]:
        """Deprecated: use :attr:`registry` (the old name read too much like ``tasks()``)."""
        warnings.warn(
            "App.registered_tasks is now App.registry; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.registry

    async def send_task(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AbortHandle:
        """Queue the registered task ``name`` (``Task.apply`` by name).

        :raises UnknownTask: when no task of that name is registered (nothing is written).
        """
        task = self._tasks.get(name)
        if task is None:
            raise UnknownTask(
                f"no task named {name!r} is registered on this App "
                f"(registered: {', '.join(sorted(self._tasks)) or 'none'})"
            )
        return await task.apply(args, kwargs, **options)

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
    ) -> list[TaskRecord]:
        """Task records, newest first, optionally filtered by state, name, labels (every
        given label must match) and the start of their id (``id_prefix``: what a search box
        finds).

        :raises UsageError: for bad states, labels, limit or offset.
        :raises InvalidText: for a ``name`` or ``id_prefix`` that is not text every store
            holds (a NUL, a lone surrogate, too long).
        """
        wanted_labels = check_labels(labels)
        wanted = None if states is None else _check_states(states)
        if not 1 <= limit <= 10_000 or not 0 <= offset <= MAX_OFFSET:
            raise UsageError(f"limit must be within 1..10000 and offset within 0..{MAX_OFFSET}")
        if name is not None:
            check_name(name)
        if id_prefix is not None:
            check_text(id_prefix, "id_prefix", MAX_TASK_ID_LENGTH)
        return await self.store.list_tasks(
            states=wanted,
            name=name,
            limit=limit,
            offset=offset,
            labels=wanted_labels or None,
            id_prefix=id_prefix or None,
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
        chosen = _check_states(["PENDING", "STARTED"] if states is None else states)
        chosen = chosen or list(TaskState)  # as in tasks(): no state given means every state
        name = None if name is None else check_name(name)
        store = self.store
        matching: list[str] = []
        # The ids first (aborting changes states), page by page by id: a task that ends
        # meanwhile shifts no page, so every task that matched all along is found.
        unfinished = [state for state in chosen if not state.is_terminal]
        while unfinished:
            page = await store.list_ids(
                states=unfinished,
                name=name,
                labels=wanted_labels or None,
                after=matching[-1] if matching else None,
                limit=ABORT_BATCH,
            )
            matching += page
            if len(page) < ABORT_BATCH:
                break
        if dry_run:
            return matching
        aborted: list[str] = []
        runtime = self.runtime
        for start in range(0, len(matching), ABORT_BATCH):
            batch = matching[start : start + ABORT_BATCH]
            aborted += await record_and_deliver_many(runtime, batch, abort_reason)
        return aborted

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
        """Delete finished records (SUCCESS, FAILURE, ABORTED) that ended more than
        ``older_than`` ago, with their abort-log rows, in batches; never a running or queued
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


def _check_states(states: Collection[TaskState | str]) -> list[TaskState]:
    """The states of a filter. :raises UsageError: for one that is not a state."""
    try:
        return [TaskState(s) for s in states]
    except ValueError as exc:
        raise UsageError(
            f"unknown state in {list(states)!r}; states are "
            + ", ".join(s.value for s in TaskState)
        ) from exc
