"""The storage contract, for those who write a store: :class:`Store`, the types its methods
take and return, the SQL store to build a dialect on, and :func:`register_scheme`.

A store keeps task records and tells the core when something changed; it decides nothing
(the legal changes are aioabort's, and :class:`aioabort.testing.MemoryStore` is the
reference a reader learns them from). Use::

    from aioabort.store import AbortOutcome, Change, Store, register_scheme

    class MyStore(Store):
        ...

    register_scheme("mystore", "mypackage.store:MyStore", driver="mydriver")

Importing this module loads no database driver.
"""

from __future__ import annotations

from ._backend import (
    AbortNotice,
    AbortOutcome,
    Change,
    ChangeCallback,
    Due,
    OwnerInfo,
    QuietOwner,
    StartResult,
    Store,
    StoreStatistics,
    Unclaimed,
    WatchedIds,
)
from ._state import StartDecision
from .backends import register_scheme
from .backends._sqlstore import Connection, SQLStore

__all__ = [
    "AbortNotice",
    "AbortOutcome",
    "Change",
    "ChangeCallback",
    "Connection",
    "Due",
    "OwnerInfo",
    "QuietOwner",
    "SQLStore",
    "StartDecision",
    "StartResult",
    "Store",
    "StoreStatistics",
    "Unclaimed",
    "WatchedIds",
    "register_scheme",
]
