"""Finding the open App ambiently: a ContextVar first, then a process-wide default.

Web servers run requests in tasks created outside the App's ``async with`` (the lifespan runs in
a task of its own), so a ContextVar alone would not reach them; the first App opened in a process
is also its default.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Protocol

from ._backend import Store
from ._errors import AppClosed, NoAppOpen, UsageError
from ._redo import Redo
from ._watcher import Watcher


class Runtime(Protocol):
    """What scopes and handles need from an open App."""

    @property
    def store(self) -> Store: ...

    @property
    def watcher(self) -> Watcher: ...

    @property
    def owner(self) -> str: ...

    @property
    def redo(self) -> Redo: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def ignored_abort_after(self) -> float: ...


_current_app: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "aioabort_current_app", default=None
)
_defaults: list[Runtime] = []


def set_current(app: Runtime) -> contextvars.Token[Runtime | None]:
    return _current_app.set(app)


def reset_current(token: contextvars.Token[Runtime | None]) -> None:
    try:
        _current_app.reset(token)
    except ValueError:
        # Closed from another context (e.g. a lifespan task): nothing to reset here.
        pass


def add_default(app: Runtime) -> None:
    if app not in _defaults:
        _defaults.append(app)


def remove_default(app: Runtime) -> None:
    if app in _defaults:
        _defaults.remove(app)


def resolve(app: Runtime | None) -> Runtime:
    """The App to use: ``app`` if given, else the one in context, else the process default."""
    if app is None:
        app = _current_app.get()
        if app is None or not app.is_open:
            app = next((a for a in _defaults if a.is_open), None)
        if app is None:
            raise NoAppOpen(
                "no aioabort App is open: open one with `async with aioabort.App(url):` "
                "(or `await app.open()`), or pass app= explicitly"
            )
    if not app.is_open:
        raise AppClosed(
            "this aioabort App is not open: use `async with app:` or `await app.open()`"
        )
    return app


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
