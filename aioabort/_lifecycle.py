"""Opening and closing an App's parts, in order: the store, this process's owner and first
heartbeat, the watcher, the heartbeat loop; and back. Closing never stops half way: when the
store fails, each step is still taken and the failure is logged."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from . import notifiers
from ._aborting import stop_here
from ._backend import OwnerInfo, Store
from ._errors import AioabortError, UsageError
from ._liveness import Liveness
from ._pushed import PushedStore
from ._redo import Redo
from ._runtime import Runtime, ServedQueues
from ._settings import AppSettings
from ._types import AbortReason
from ._watcher import Watcher
from .backends import redact, store_factory

logger = logging.getLogger("aioabort")


#: Makes the App's store, given its poll interval (``None``: the store's default).
MakeStore = Callable[[float | None], Store]


def choose_store(
    url: str | None, store: Store | None, poll_interval: float | None
) -> tuple[MakeStore | None, str]:
    """How an App makes its store, and the URL it shows: from ``store=``, a URL, or
    ``$AIOABORT_URL`` now (``None`` when unset: the App reads it again when it opens).

    :raises UsageError: for both a URL and a store, or a store that is not one.
    """
    if store is not None:
        if url is not None:
            raise UsageError("pass either a URL or store=, not both")
        if not isinstance(store, Store):
            raise UsageError(f"store= must be an aioabort.Store, got {type(store).__name__}")
        if poll_interval is not None:
            raise UsageError("with store=, set the poll interval on the store itself")
        return (lambda _poll_interval: store), store.display_url
    url = url if url is not None else os.environ.get("AIOABORT_URL") or None
    if url is None:
        return None, "$AIOABORT_URL"
    return store_factory(url), redact(url)


async def open_parts(
    store: Store,
    settings: AppSettings,
    spawn: Callable[[Coroutine[Any, Any, object], str], None],
) -> tuple[Runtime, OwnerInfo, Liveness]:
    """Open ``store`` (with the notifier of ``settings`` beside it, if any) and start what
    runs beside it; on any failure the store is closed."""
    owner = OwnerInfo(uuid.uuid4().hex, socket.gethostname(), os.getpid())
    if settings.notifier is not None:
        store = PushedStore(store, notifiers.make(settings.notifier), owner.id)
    try:
        await store.open()
        await store.heartbeat(owner)
        watcher = Watcher(store)
        await watcher.start()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.aclose()
        raise
    # The first cancel scope in a process loads anyio's asyncio backend (tens of ms): do it
    # now so the first abort is not slow.
    with anyio.CancelScope() as warm:  # noqa: ASYNC100 - entering it is the point
        warm.cancel()
    runtime = Runtime(
        store=store,
        watcher=watcher,
        owner=owner.id,
        redo=Redo(),
        ignored_abort_after=settings.ignored_abort_after,
        spawn=spawn,
        served=ServedQueues(),
    )
    retention = settings.retention
    liveness = Liveness(
        store,
        owner,
        interval=settings.heartbeat_interval,
        stale_after=settings.stale_after,
        retention=None if retention is None else retention.total_seconds(),
    )
    liveness.start()
    return runtime, owner, liveness


async def close_parts(
    runtime: Runtime,
    owner: OwnerInfo,
    liveness: Liveness,
    background: set[asyncio.Task[object]],
    shutdown_grace: float,
) -> None:
    """Abort the scopes still open (code ``shutdown``) and give them ``shutdown_grace``
    seconds, cancel ``background``, stop the heartbeat and the watcher, release this owner's
    tasks and close the store."""
    try:
        await _abort_open_scopes(runtime, shutdown_grace)
        await _cancel(background)
    finally:
        try:
            await liveness.stop()
            await runtime.watcher.stop()
            await _release(runtime, owner)
        finally:
            await runtime.store.aclose()


async def _abort_open_scopes(runtime: Runtime, shutdown_grace: float) -> None:
    scopes = runtime.watcher.scopes()
    if not scopes:
        return
    reason = AbortReason(AbortReason.SHUTDOWN, "the aioabort App is closing")
    for scope in scopes:
        await stop_here(runtime, scope.id, reason)
    with anyio.move_on_after(shutdown_grace):
        await runtime.watcher.wait_idle()


async def _cancel(background: set[asyncio.Task[object]]) -> None:
    """Spawned tasks that never entered their scope (or outlived the grace) are cancelled;
    their records end as the scope records them, or are reaped as lost."""
    for task in list(background):
        task.cancel()
    if background:
        await asyncio.gather(*background, return_exceptions=True)


async def _release(runtime: Runtime, owner: OwnerInfo) -> None:
    unsent = await runtime.redo.aclose()
    if unsent:
        logger.warning(
            "the ends of some tasks could not be recorded before the App closed",
            extra={"action": "ends_unsent", "task_ids": unsent},
        )
    try:
        lost = await runtime.store.release_owner(owner.id)
    except AioabortError as exc:
        # Closing must not fail on bookkeeping: another App reaps this owner later.
        logger.warning(
            "could not release this process's tasks while closing",
            extra={"action": "release_failed", "error": str(exc)},
        )
        return
    if lost:
        logger.warning(
            "tasks still running when the App closed were ended as lost",
            extra={"action": "tasks_lost", "task_ids": lost},
        )
