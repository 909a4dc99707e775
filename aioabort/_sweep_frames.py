"""What the abort sweep reads off a suspended body: whose code a frame is, where the body's own
code stands, and which tasks and threads the body started.

*Your code* is every file that is neither the standard library, an installed package
(site-packages, dist-packages) nor aioabort itself: the test file, the application under
test, code run from a string. A location is the ``file.py:LINE`` (the file's base name) of the
innermost frame of your code on the chain a suspended coroutine awaits through
(``cr_await``); where none is there (a framework's await before your handler runs), of the
innermost frame of an installed package, else of the innermost frame of all.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

#: Whose code a file is: yours, an installed package's, the standard library's, aioabort's,
#: or the sweep's own (never the body's, even when aioabort sweeps itself).
Kind = Literal["user", "package", "stdlib", "aioabort", "sweep"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: The sweep's own files: never the body's code, even when aioabort sweeps itself.
_SWEEP_FILES = tuple(
    os.path.join(_PACKAGE, name) for name in ("_sweep.py", "_sweep_frames.py", "_sweep_asgi.py")
)


def _roots(*paths: str) -> tuple[str, ...]:
    return tuple(sorted({os.path.abspath(path) + os.sep for path in paths if path}))


_PATHS = sysconfig.get_paths()
_PACKAGES = _roots(
    _PATHS["purelib"], _PATHS["platlib"], *site.getsitepackages(), site.getusersitepackages()
)
_STDLIB = _roots(_PATHS["stdlib"], _PATHS["platstdlib"])


@functools.lru_cache(maxsize=4096)
def kind_of(filename: str) -> Kind:
    """Whose code the file ``filename`` is."""
    if filename.startswith("<frozen"):
        return "stdlib"
    if filename.startswith("<"):
        return "user"  # code run from a string: python -c, exec()
    path = os.path.abspath(filename)
    if path.startswith(_PACKAGE):
        return "sweep" if path in _SWEEP_FILES else "aioabort"
    if path.startswith(_PACKAGES):  # before the stdlib: site-packages may lie inside it
        return "package"
    return "stdlib" if path.startswith(_STDLIB) else "user"


@dataclass(frozen=True, slots=True)
class CodeRule:
    """Which frames count as the body's own code: aioabort's own count only when aioabort
    sweeps itself (``own=True``)."""

    own: bool = False

    def is_user(self, filename: str) -> bool:
        kind = kind_of(filename)
        return kind == "user" or (self.own and kind == "aioabort")


def where(frame: FrameType) -> str:
    """``file.py:LINE`` of ``frame``."""
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def awaited_frames(coro: Any) -> Iterator[FrameType]:
    """The frames of ``coro`` and of what it awaits, outermost first (a coroutine, a
    generator-based coroutine, an async generator; a future or an ``async for`` ends it)."""
    seen = 0
    while coro is not None and seen < 1000:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield frame
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )


def location(coro: Any, rule: CodeRule) -> str:
    """Where the suspended ``coro`` stands in the body's own code (see the module's text)."""
    innermost = mine = package = None
    for frame in awaited_frames(coro):
        innermost = frame
        filename = frame.f_code.co_filename
        if rule.is_user(filename):
            mine = frame
        elif kind_of(filename) == "package":
            package = frame
    chosen = mine or package or innermost
    return "?" if chosen is None else where(chosen)


def creator(rule: CodeRule) -> str | None:
    """Where the code creating a task stands, if it is the body's: walking out from the
    caller, library frames are passed; the first frame of the body's code names the place,
    the first of aioabort's means aioabort made the task (its own, not the body's)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if rule.is_user(filename):
            return where(frame)
        if kind_of(filename) == "aioabort":
            return None
        frame = frame.f_back
    return None


# -- the tasks a body starts ------------------------------------------------------------------


@dataclass(eq=False)
class Started:
    """The tasks (with where they were created) and the ``scope.to_thread`` calls one run's
    body started."""

    rule: CodeRule
    loop: asyncio.AbstractEventLoop
    tasks: list[tuple[asyncio.Task[Any], str]] = field(default_factory=list)
    threads: dict[int, str] = field(default_factory=dict)
    _keys: Iterator[int] = field(default_factory=itertools.count)
    _threads_done: asyncio.Event = field(default_factory=asyncio.Event)

    def track_thread(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """Wrap a ``scope.to_thread`` call: counted while it runs in its thread."""
        key, name, loop, done = next(self._keys), _name(call), self.loop, self._threads_done

        def tracked() -> Any:
            self.threads[key] = name
            try:
                return call()
            finally:
                del self.threads[key]
                if not self.threads:
                    loop.call_soon_threadsafe(done.set)

        return tracked

    async def threads_done(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the calls still running to return."""
        deadline = self.loop.time() + timeout
        while True:
            self._threads_done.clear()  # a set already scheduled still comes after this
            left = deadline - self.loop.time()
            if not self.threads or left <= 0:
                return
            try:
                await asyncio.wait_for(self._threads_done.wait(), left)
            except TimeoutError:
                return


def _name(call: Callable[..., Any]) -> str:
    while isinstance(call, functools.partial):
        call = call.func
    return getattr(call, "__qualname__", None) or repr(call)


def task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None)
    return f"{name}()" if name else repr(coro)


#: The run whose body is running in this context (tasks created here belong to it).
current_run: contextvars.ContextVar[Started | None] = contextvars.ContextVar(
    "aioabort_sweep_run", default=None
)

_installed: dict[asyncio.AbstractEventLoop, tuple[int, Any]] = {}
_lock = threading.Lock()


def _factory(previous: Any) -> Callable[..., asyncio.Task[Any]]:
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if previous is not None:
            task: asyncio.Task[Any] = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        started = current_run.get()
        if started is not None:
            place = creator(started.rule)
            if place is not None:
                started.tasks.append((task, place))
        return task

    return factory


def watch_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Learn of the tasks bodies start on ``loop`` (a task factory over the loop's own, for
    as long as a sweep runs; sweeps running at once share it)."""
    with _lock:
        count, previous = _installed.get(loop, (0, None))
        if count == 0:
            previous = loop.get_task_factory()
            loop.set_task_factory(_factory(previous))
        _installed[loop] = (count + 1, previous)


def unwatch_tasks(loop: asyncio.AbstractEventLoop) -> None:
    with _lock:
        count, previous = _installed.pop(loop)
        if count > 1:
            _installed[loop] = (count - 1, previous)
        else:
            loop.set_task_factory(previous)
