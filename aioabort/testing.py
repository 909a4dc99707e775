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
its cleanup breaks; :func:`asgi_request` sweeps a web request through the middleware. They
load on first use, so ``import aioabort`` does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._memory import MemoryStore
from ._memory_records import MemoryDatabase

if TYPE_CHECKING:
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

#: The abort sweep's names, by the private module each comes from.
_SWEEP = {
    "AsgiRequest": "_sweep_asgi",
    "SweepError": "_sweep_report",
    "SweepReport": "_sweep_report",
    "SweepRun": "_sweep_report",
    "abort_sweep": "_sweep",
    "asgi_request": "_sweep_asgi",
}


def __getattr__(name: str) -> object:
    if name not in _SWEEP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for public, module in _SWEEP.items():  # all at once: their errors read aioabort.testing.X
        value: object = getattr(importlib.import_module(f"{__package__}.{module}"), public)
        value.__module__ = __name__
        globals()[public] = value
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _public in (MemoryDatabase, MemoryStore):
    _public.__module__ = __name__
del _public
