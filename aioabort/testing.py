"""Testing code that uses aioabort: an in-process store, the reference implementation of the
:class:`~aioabort.Store` contract.

Use it in an application's tests, with no database::

    from aioabort.testing import MemoryStore

    async def test_export_stops_when_aborted():
        async with aioabort.App(store=MemoryStore()) as app:
            ...

``memory://name`` URLs give the Apps of a process that name it one shared
:class:`MemoryDatabase`.
"""

from __future__ import annotations

from ._memory import MemoryStore
from ._memory_records import MemoryDatabase

__all__ = ["MemoryDatabase", "MemoryStore"]

for _public in (MemoryDatabase, MemoryStore):
    _public.__module__ = __name__
del _public
