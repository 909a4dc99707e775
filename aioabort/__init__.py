"""aioabort: stop a running coroutine from any process, cleanly, with the reason recorded.

Layout, lowest first; imports point one way:

  _types, _errors   values, ids and the error tree; no I/O
  _state            task states and their legal changes, pure functions; knows nothing of storage
  _backend          the storage contract; backends/ implement it (SQLite, PostgreSQL), loaded by
                    URL scheme; testing.MemoryStore is the reference implementation
  _shield, _redo    aioabort's own writes: shielded from cancellation, retried until they land
  _scope, _progress, _watcher, _aborting, _handle
                    the consumer, its progress, the per-process watcher, aborting, the producer
  _liveness, _app, _runner, _worker
                    heartbeat and reaping, the App (composition root), tasks, the worker
  web, aiohttp, cli integrations on top
  sync, celery      sync callers and the Celery bridge: the async core on a loop thread
"""

from __future__ import annotations

from . import testing as testing  # aioabort.testing.MemoryStore, for tests of applications
from ._abortable import abortable, current_scope
from ._app import App
from ._backend import Store, Unclaimed
from ._errors import (
    AioabortError,
    AppClosed,
    BlockingCallInEventLoop,
    InvalidArguments,
    InvalidOption,
    InvalidReason,
    InvalidTaskId,
    InvalidText,
    InvalidURL,
    MissingDriver,
    NoAppOpen,
    NoCurrentScope,
    NotJSONSerializable,
    ScopeAlreadyEntered,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TaskAborted,
    TaskAlreadyExists,
    TaskAlreadyFinished,
    TaskAlreadyStarted,
    TaskFailed,
    TaskNotFound,
    TaskStateError,
    UnknownTask,
    UsageError,
)
from ._handle import AbortHandle
from ._runner import Task
from ._scope import AbortScope
from ._state import TaskRecord, TaskState
from ._timeline import TaskEvent
from ._types import AbortReason, ErrorInfo
from ._watcher import Watcher, WatcherStatistics
from ._worker import Worker, WorkerStatistics

__version__ = "0.1.0"

__all__ = [
    "AbortHandle",
    "AbortReason",
    "AbortScope",
    "AioabortError",
    "App",
    "AppClosed",
    "BlockingCallInEventLoop",
    "ErrorInfo",
    "InvalidArguments",
    "InvalidOption",
    "InvalidReason",
    "InvalidTaskId",
    "InvalidText",
    "InvalidURL",
    "MissingDriver",
    "NoAppOpen",
    "NoCurrentScope",
    "NotJSONSerializable",
    "ScopeAlreadyEntered",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskAborted",
    "TaskAlreadyExists",
    "TaskAlreadyFinished",
    "TaskAlreadyStarted",
    "TaskEvent",
    "TaskFailed",
    "TaskNotFound",
    "TaskRecord",
    "TaskState",
    "TaskStateError",
    "Unclaimed",
    "UnknownTask",
    "UsageError",
    "Watcher",
    "WatcherStatistics",
    "Worker",
    "WorkerStatistics",
    "abortable",
    "current_scope",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("aioabort."):
        try:
            _obj.__module__ = "aioabort"
        except (AttributeError, TypeError):  # pragma: no cover - builtins-like objects
            pass
del _name, _obj, annotations
