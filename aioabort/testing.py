"""Testing code that uses aioabort: an in-process store, the reference implementation of the
:class:`~aioabort.Store` contract, and the abort sweep.

Use it in an application's tests, with no database::

    from aioabort.testing import MemoryStore

    async def test_export_stops_when_aborted():
        async with aioabort.App(store=MemoryStore()) as app:
            ...

``memory://name`` URLs give the Apps of a process that name it one shared
:class:`MemoryDatabase`.

:func:`abort_sweep` aborts a body at each of its suspension points in turn and reports where
its cleanup breaks; :func:`asgi_request` sweeps a web request through the middleware.
"""

from __future__ import annotations

from ._memory import MemoryStore
from ._memory_records import MemoryDatabase
from ._sweep import abort_sweep
from ._sweep_asgi import AsgiRequest, asgi_request
from ._sweep_report import SweepError, SweepReport, SweepRun

__all__ = [
    "AsgiRequest",
    "MemoryDatabase",
    "MemoryStore",
    "SweepError",
    "SweepReport",
    "SweepRun",
    "abort_sweep",
    "asgi_request",
]

for _public in (
    AsgiRequest,
    MemoryDatabase,
    MemoryStore,
    SweepError,
    SweepReport,
    SweepRun,
    abort_sweep,
    asgi_request,
):
    _public.__module__ = __name__
del _public
