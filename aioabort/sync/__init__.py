"""aioabort for sync code: Django views, scripts, Celery producers and workers.

::

    import aioabort.sync

    with aioabort.sync.App("postgresql://app@db/app") as aborts:
        aborts.handle("report-42").abort(reason="user pressed stop")
        handle = aborts.send_task("reports.build", args=[42])
        record = handle.wait(timeout=60)

The same names as :class:`aioabort.App` and :class:`aioabort.AbortHandle`, without ``await``:
the async App runs on one private event-loop thread per process, which every sync call hands
its work to. Calls are thread-safe; a forked child opens its own loop and connections.
A sync call made on a running event loop raises :class:`aioabort.BlockingCallInEventLoop`.
"""

from __future__ import annotations

from .._errors import BlockingCallInEventLoop
from ._app import AbortHandle, App

__all__ = ["AbortHandle", "App", "BlockingCallInEventLoop"]

for _name in ("AbortHandle", "App"):
    globals()[_name].__module__ = "aioabort.sync"
del _name
