"""Finding the open App ambiently: a ContextVar first, then a process-wide default.

Web servers run requests in tasks created outside the App's ``async with`` (the lifespan runs in
a task of its own), so a ContextVar alone would not reach them; the first App opened in a process
is also its default.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._backend import Store
from ._errors import AppClosed, NoAppOpen, UsageError
from ._redo import Redo
from ._watcher import Watcher


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    """The parts of an open App, made once when it opens: what scopes, handles, tasks, the
    worker and the web receive (``App.runtime``). It stays usable while its App closes, so a
    scope that exits then still records how its task ended.

    :ivar store: the store.
    :ivar watcher: this process's watcher.
    :ivar owner: this process's owner id, stored on the tasks it runs.
    :ivar redo: writes of this process's records that failed, retried until they land.
    :ivar ignored_abort_after: seconds after which a task still running after its abort
        reached it is shown as ignoring it.
    :ivar spawn: runs a coroutine in the background under the App (cancelled when it closes).
    :ivar served: the queues this App's running workers claim from.
    """

    store: Store
    watcher: Watcher
    owner: str
    redo: Redo
    ignored_abort_after: float
    spawn: Callable[[Coroutine[Any, Any, object], str], None]
    served: ServedQueues


class ServedQueues:
    """How many running workers of one App claim from each queue: a queue stays published
    (what ``App.unclaimed()`` judges by) while any of them does."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, queues: Sequence[str]) -> None:
        self._counts.update(queues)

    def remove(self, queues: Sequence[str]) -> list[str]:
        """Count one worker fewer on each of ``queues``; returns those no worker serves now."""
        self._counts.subtract(queues)
        return [queue for queue in queues if self._counts[queue] <= 0]


class Host(Protocol):
    """What the ambient lookup holds: an App, open or not."""

    @property
    def is_open(self) -> bool: ...

    @property
    def runtime(self) -> Runtime: ...


_current_app: contextvars.ContextVar[Host | None] = contextvars.ContextVar(
    "aioabort_current_app", default=None
)
_defaults: list[Host] = []


def set_current(app: Host) -> contextvars.Token[Host | None]:
    return _current_app.set(app)


def reset_current(token: contextvars.Token[Host | None]) -> None:
    try:
        _current_app.reset(token)
    except ValueError:
        # Closed from another context (e.g. a lifespan task): nothing to reset here.
        pass


def add_default(app: Host) -> None:
    if app not in _defaults:
        _defaults.append(app)


def remove_default(app: Host) -> None:
    if app in _defaults:
        _defaults.remove(app)


def find(app: Host | None = None) -> Host:
    """The App to use: ``app`` if given, else the one in context, else the process default.

    :raises NoAppOpen: when none is given and none is open.
    """
    if app is None:
        app = _current_app.get()
        if app is None or not app.is_open:
            app = next((a for a in _defaults if a.is_open), None)
        if app is None:
            raise NoAppOpen(
                "no aioabort App is open: open one with `async with aioabort.App(url):` "
                "(or `await app.open()`), or pass app= explicitly"
            )
    return app


def resolve(app: Host | None) -> Runtime:
    """The parts of the App :func:`find` finds.

    :raises NoAppOpen: when there is none.
    :raises AppClosed: when the App given is not open.
    """
    return find(app).runtime


def not_open(app: object) -> AppClosed:
    """The one error for an App used while it is not open."""
    return AppClosed(f"{app!r} is not open: use `async with app:` or `await app.open()`")


def require_asyncio(what: str) -> None:
    """aioabort runs on asyncio only (its drivers do): under trio, or outside any event loop,
    say so at the call instead of failing deep inside a driver.

    :raises UsageError: when the running event loop is not asyncio's.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            import sniffio

            running = sniffio.current_async_library()
        except Exception:  # noqa: BLE001 - any failure here means "not in an event loop"
            running = "no event loop"
        raise UsageError(
            f"aioabort runs on asyncio, but {what} was called under {running}: run it with "
            "asyncio.run(), or anyio.run(..., backend='asyncio')"
        ) from None
