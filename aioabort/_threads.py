"""Running a scope's blocking code in a thread (``scope.to_thread``), and interrupting it.

With ``interrupt=True`` the abort raises :class:`TaskAborted` inside the thread (CPython's
``PyThreadState_SetAsyncExc``), between two bytecodes of Python code: a thread blocked in a C
call (a socket read, ``time.sleep``) gets it when that call returns. It is sent only while
``fn`` runs, never into the thread pool's own code once ``fn`` has returned.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._errors import TaskAborted

if TYPE_CHECKING:
    from ._types import AbortReason

T = TypeVar("T")


class ThreadCalls(Protocol):
    """Told of each ``to_thread`` call as it starts: wraps it to learn when it returns."""

    def __call__(self, call: Callable[[], T], /) -> Callable[[], T]: ...


#: Set by the abort sweep around a body it runs (``None`` everywhere else): the sweep reports
#: a ``to_thread`` call still running when the body has ended.
thread_calls: contextvars.ContextVar[ThreadCalls | None] = contextvars.ContextVar(
    "aioabort_thread_calls", default=None
)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode (``None``: take it back)."""
    target = None if exc is None else ctypes.py_object(exc)  # None: NULL, which clears it
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target))


class Interruptible:
    """One ``to_thread(..., interrupt=True)`` call: :meth:`wrap` runs in the thread,
    :meth:`interrupt` (the scope's abort, on the event loop) raises into it."""

    __slots__ = ("_done", "_exc", "_lock", "_task_id", "_thread")

    def __init__(self, task_id: str) -> None:
        self._task_id = task_id
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._exc: Callable[[], TaskAborted] | None = None  # set at the abort: a class
        self._done = False

    def interrupt(self, reason: AbortReason) -> None:
        """The abort: raise :class:`TaskAborted` in the thread now if ``fn`` runs, or as it
        starts if it has not yet."""
        task_id = self._task_id

        class _Aborted(TaskAborted):  # raised by class, without arguments
            def __init__(self) -> None:
                super().__init__(task_id, reason)

        _Aborted.__name__ = _Aborted.__qualname__ = "TaskAborted"
        with self._lock:
            if self._exc is not None or self._done:
                return
            self._exc = _Aborted
            if self._thread is not None:
                _set_async_exc(self._thread, _Aborted)

    def wrap(self, call: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            with self._lock:
                if self._exc is not None:
                    raise self._exc()
                self._thread = threading.get_ident()
            try:
                return call()
            finally:
                self._finish()

        return run

    def _finish(self) -> None:
        """In the thread, ``fn`` has returned: no interrupt from now on."""
        with self._lock:
            self._done = True
            if self._exc is not None:  # sent, perhaps not raised yet: take it back
                _set_async_exc(threading.get_ident(), None)
