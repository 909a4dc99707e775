"""The store seam is public: every type a store author meets in the contract is importable
from ``aioabort.store`` (or the front door), from a sorted, complete ``__all__``."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing
from collections.abc import Iterable, Iterator
from typing import Any

import aioabort
import aioabort.store
from aioabort.store import SQLStore, Store

#: What a SQL driver implements (private: only a subclass calls them).
_DRIVER_METHODS = ("_transaction", "_statement", "_timestamp")


def test_all_is_sorted_and_complete() -> None:
    names = aioabort.store.__all__
    assert names == sorted(names)
    public = {
        name
        for name, obj in vars(aioabort.store).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and name != "annotations"
    }
    assert public == set(names)


def test_every_type_of_the_contract_is_public() -> None:
    """The types in the signatures of Store's methods and the SQL store's driver methods, and
    in the fields of those types: none is reachable only through a private module."""
    found = set(_contract_types())
    assert {aioabort.store.Change, aioabort.store.StartDecision, aioabort.store.Connection} <= found
    exported = _exported(aioabort) | _exported(aioabort.store)
    assert sorted(t.__qualname__ for t in found if t not in exported) == []


def test_names_work_where_they_are_imported_today() -> None:
    from aioabort import _backend
    from aioabort.backends import _sqlstore, register_scheme

    assert aioabort.store.Change is _backend.Change
    assert aioabort.store.Store is aioabort.Store is _backend.Store
    assert aioabort.store.SQLStore is _sqlstore.SQLStore
    assert aioabort.store.register_scheme is register_scheme


def test_importing_it_loads_no_driver() -> None:
    code = (
        "import sys, aioabort.store; "
        "print(sorted(m for m in ('asyncpg', 'aiosqlite') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _exported(module: Any) -> set[Any]:
    return {getattr(module, name) for name in module.__all__}


def _contract_types() -> Iterator[type]:
    seen: set[type] = set()
    for cls in (Store, SQLStore):
        for name in dir(cls):
            if name.startswith("_") and name not in _DRIVER_METHODS:
                continue
            member = inspect.getattr_static(cls, name)
            function = getattr(member, "__func__", member)
            if callable(function):
                yield from _types_in(typing.get_type_hints(function).values(), seen)


def _types_in(annotations: Iterable[Any], seen: set[type]) -> Iterator[type]:
    for annotation in annotations:
        # Callable[[A, B], R]'s arguments come as a list.
        parts = annotation if isinstance(annotation, list) else typing.get_args(annotation)
        yield from _types_in(parts, seen)
        if not isinstance(annotation, type) or annotation in seen:
            continue
        seen.add(annotation)
        if annotation.__module__.startswith("aioabort"):
            yield annotation
            # The front door's types are its own test's (test_public_api.py).
            if dataclasses.is_dataclass(annotation) and annotation not in _exported(aioabort):
                yield from _types_in(typing.get_type_hints(annotation).values(), seen)
