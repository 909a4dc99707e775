"""The Celery bridge: ``celery.contrib.abortable``'s classes, by the same names, with aborts
delivered by push and end states that say what the task did.

::

    from aioabort.celery import AbortableTask, setup

    app = Celery("proj", broker="redis://localhost")
    setup(app, "postgresql://app@db/app")          # the store every worker and producer shares

    @app.task(bind=True, base=AbortableTask)
    def export(self, n):
        for i in range(n):
            self.raise_if_aborted()                 # ends the task ABORTED, with the reason
            step(i)

    result = export.delay(100)                      # an AbortableAsyncResult
    result.abort(reason="the user cancelled")       # sync; the task stops at its next check

Each process that runs tasks holds one aioabort App on a private event-loop thread, opened
after the fork (prefork children, threads and solo workers alike); a task's run is an aioabort
record with Celery's task id, so ``aioabort abort ID``, the dashboard and
``app.handle(id).abort()`` act on it too. Needs the ``celery`` extra.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import current_app, signals

from .._app import App as AsyncApp
from .._errors import InvalidURL, UsageError
from . import _bridge
from ._task import ABORTED, AbortableAsyncResult, AbortableTask

__all__ = ["ABORTED", "AbortableAsyncResult", "AbortableTask", "setup"]


def setup(celery_app: Any, url: str | None = None, **settings: Any) -> None:
    """Link ``celery_app`` to the aioabort store at ``url``: call it where the Celery app is
    made, so that workers and producers both run it. (Setting
    ``celery_app.conf.aioabort_url`` does the same, with default settings.)

    No I/O here: each worker process opens the store once it has started (after the fork),
    and a producer at its first ``abort()``.

    :param url: the store, as for :class:`aioabort.App`; by default ``$AIOABORT_URL``.
    :param settings: :class:`aioabort.App`'s settings (``heartbeat_interval``,
        ``stale_after``, ``poll_interval``...).
    :raises InvalidURL: for a missing or unknown URL; :raises UsageError: for bad settings.
    """
    url = url or os.environ.get("AIOABORT_URL")
    if not url:
        raise InvalidURL("aioabort.celery.setup() needs the store's URL (or $AIOABORT_URL)")
    AsyncApp(url, **settings)  # checks the URL and the settings now
    celery_app.conf.aioabort_url = url
    celery_app.conf.aioabort_settings = settings


def _abortable_names(celery_app: Any) -> list[str]:
    return sorted(n for n, t in celery_app.tasks.items() if isinstance(t, AbortableTask))


def _check_at_worker_start(sender: Any = None, **_: Any) -> None:
    """A worker whose app has abortable tasks but no store refuses to start (a signal
    handler's exception would only be logged, so it exits)."""
    celery_app = getattr(sender, "app", None)
    if celery_app is None or not _abortable_names(celery_app):
        return
    try:
        _bridge.configured_url(celery_app)
    except UsageError as exc:
        raise SystemExit(f"aioabort.celery: {exc}") from None


def _open_in_this_process(**_: Any) -> None:
    """A prefork child (after the fork) or a solo worker: open its store now, not at its
    first task."""
    _open_if_set_up(current_app._get_current_object())


def _open_in_a_threads_worker(sender: Any = None, **_: Any) -> None:
    """A threads worker runs its tasks in this process, which gets no worker_process_init."""
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__ == "celery.concurrency.thread":
        _open_if_set_up(sender.app)


def _open_if_set_up(celery_app: Any) -> None:
    """Open the store in the background: a child that has not said it is up within seconds
    is replaced by the pool, so the process's start never waits on the store (its first task
    waits for the open, a bounded time)."""
    if celery_app.conf.get("aioabort_url") and _abortable_names(celery_app):
        bridge = _bridge.bridge_for(celery_app)
        threading.Thread(target=_open, args=(bridge,), name="aioabort-open", daemon=True).start()


def _open(bridge: _bridge.Bridge) -> None:
    try:
        bridge.open()
    except Exception:  # noqa: BLE001 - tasks run all the same; each run tries again
        _bridge.logger.warning(
            "the aioabort store could not be opened; tasks run and their records catch up",
            exc_info=True,
            extra={"action": "celery_store_unavailable"},
        )


def _close_in_this_process(**_: Any) -> None:
    _bridge.close_all()


signals.worker_init.connect(_check_at_worker_start, weak=False)
signals.worker_process_init.connect(_open_in_this_process, weak=False)
signals.worker_ready.connect(_open_in_a_threads_worker, weak=False)
signals.worker_process_shutdown.connect(_close_in_this_process, weak=False)
signals.worker_shutdown.connect(_close_in_this_process, weak=False)
